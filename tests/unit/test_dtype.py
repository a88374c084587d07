"""dtype=auto: decided by a probe in both dtypes; CPU flags are read, not trusted."""

from __future__ import annotations

from pathlib import Path

import pytest

from matryoshka.engine import dtype
from matryoshka.engine.dtype import choose_dtype, cpu_bf16_flags


@pytest.mark.parametrize(
    ("fp32", "bf16", "chosen"),
    [(300.0, 55.0, "float32"), (60.0, 200.0, "bfloat16"), (100.0, 110.0, "float32")],
    ids=["bf16-emulated", "bf16-native", "too-close-to-call"],
)
def test_auto_picks_the_faster_dtype_on_the_probe(
    monkeypatch: pytest.MonkeyPatch, fp32: float, bf16: float, chosen: str
) -> None:
    rates = {"torch.float32": fp32, "torch.bfloat16": bf16}
    monkeypatch.setattr(dtype, "matmul_gflops", lambda d, repeats=3: rates[str(d)])
    choice = choose_dtype("auto")
    assert choice.name == chosen
    assert (choice.fp32_gflops, choice.bf16_gflops) == (fp32, bf16)
    assert "probe" in choice.reason


def test_explicit_and_gpu_settings_skip_the_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dtype, "matmul_gflops", lambda d, repeats=3: pytest.fail("probed"))
    assert choose_dtype("fp32").name == "float32"
    assert choose_dtype("bfloat16").name == "bfloat16"
    assert choose_dtype("auto", device="cuda").name == "bfloat16"
    assert choose_dtype("fp16", device="cuda").name == "float16"  # published checkpoints on a GPU
    with pytest.raises(ValueError, match="auto"):
        choose_dtype("int8")


def test_cpu_flags_are_read(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("flags\t\t: fpu avx512f avx512_bf16 sse\n")
    assert cpu_bf16_flags(info) == ("avx512_bf16",)
    assert cpu_bf16_flags(tmp_path / "missing") == ()


def test_the_probe_measures_both_dtypes() -> None:
    assert dtype.matmul_gflops(dtype.DTYPES["fp32"], repeats=1) > 0
    assert dtype.matmul_gflops(dtype.DTYPES["bf16"], repeats=1) > 0
