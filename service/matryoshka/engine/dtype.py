"""`dtype=auto`: pick bfloat16 where it is really faster (a GPU, or a CPU whose bf16 matmuls beat fp32),
else float32. Decided once at start-up by timing a short layer-shaped matmul in both dtypes; the CPU's
bf16 flags are read and reported but not trusted (a CPU can list avx512_bf16 and still run bf16 slower
than fp32 through torch's kernels)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,  # GPUs
    "fp16": torch.float16,
}
NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
PROBE_SHAPE = (1024, 576, 1536)  # tokens x hidden x MLP width: one SmolLM2 MLP projection over a bucket


@dataclass(frozen=True)
class DtypeChoice:
    """The chosen dtype and the evidence it was chosen on."""

    name: str  # "float32", "bfloat16" or "float16"
    reason: str
    fp32_gflops: float | None = None
    bf16_gflops: float | None = None
    cpu_bf16_flags: tuple[str, ...] = ()


def cpu_bf16_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[str, ...]:
    """The bf16 capability flags the CPU reports (empty when unknown)."""
    try:
        words = set(cpuinfo.read_text().split())
    except OSError:
        return ()
    return tuple(f for f in BF16_FLAGS if f in words)


def matmul_gflops(dtype: torch.dtype, repeats: int = 3) -> float:
    """Best-of-`repeats` GFLOP/s of a layer-shaped matmul in `dtype` on the CPU."""
    m, k, n = PROBE_SHAPE
    a = torch.randn(m, k).to(dtype)
    b = torch.randn(k, n).to(dtype)
    with torch.inference_mode():
        torch.mm(a, b)  # warm-up: kernel selection and packing
        best = float("inf")
        for _ in range(repeats):
            tick = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - tick)
    return 2 * m * k * n / best / 1e9


def choose_dtype(setting: str, device: str = "cpu", margin: float = 1.15) -> DtypeChoice:
    """Resolve a dtype setting; `auto` picks bf16 on a GPU, and on a CPU only if it beats fp32 by `margin`."""
    if setting != "auto":
        if setting not in DTYPES:
            raise ValueError(f"dtype must be auto or one of {sorted(DTYPES)}, got {setting!r}")
        return DtypeChoice(NAMES[DTYPES[setting]], "set explicitly")
    if device != "cpu":
        return DtypeChoice("bfloat16", f"auto: {device} runs bf16 natively")
    flags = cpu_bf16_flags()
    fp32 = matmul_gflops(torch.float32)
    bf16 = matmul_gflops(torch.bfloat16)
    faster = bf16 >= margin * fp32
    name = "bfloat16" if faster else "float32"
    reason = (
        f"auto: probe bf16 {bf16:.0f} vs fp32 {fp32:.0f} GFLOP/s"
        f" (CPU bf16 flags: {', '.join(flags) or 'none'})"
    )
    return DtypeChoice(name, reason, fp32, bf16, flags)
