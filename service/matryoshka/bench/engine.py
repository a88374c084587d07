"""Engine benchmark: a plain Hugging Face forward vs the engine at full depth, then with depth and
width cut, in one run, for fp32, bf16 and fp16, on the CPU or a CUDA device, for a packaged backbone
or a checkpoint directory. Every row is exactly `tokens` long. Plain and engine runs alternate and
each figure is the best of `repeats` runs, so machine noise hits both sides alike."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import torch

from matryoshka.engine.executor import Executor
from matryoshka.engine.job import Job, JobResult
from matryoshka.engine.named_plans import light_plan
from matryoshka.engine.plan import Plan
from matryoshka.model.checkpoint import load_checkpoint
from matryoshka.model.loading import DEFAULT_BACKBONE, load_backbone
from matryoshka.model.matryoshka_model import MatryoshkaModel, ModelInfo
from matryoshka.model.prompt import Truncation

WORDS = [
    "retrieval",
    "ranking",
    "passage",
    "query",
    "model",
    "layer",
    "width",
    "depth",
    "token",
    "attention",
    "budget",
    "cache",
    "exit",
    "score",
    "search",
    "engine",
    "index",
    "document",
    "relevance",
    "answer",
    "question",
    "evidence",
    "science",
    "river",
    "mountain",
    "city",
    "history",
    "protein",
    "cell",
    "energy",
    "climate",
    "market",
    "policy",
    "language",
    "music",
    "theory",
    "network",
    "signal",
    "data",
    "system",
]


def configs(info: ModelInfo) -> dict[str, Plan]:
    """The `light` plan and its two halves: its depth alone, its width merge alone, then both."""
    light = light_plan(info)
    plans = {f"depth{light.depth}": Plan(depth=light.depth)}
    if light.width:  # a model too shallow for the light plan to merge measures depth alone
        (merge_at, target), *_ = sorted(light.width.items())
        plans[f"width50@{merge_at}"] = Plan(width={merge_at: target})
        plans[f"depth{light.depth}+width50@{merge_at}"] = light
    return plans


def _best_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Best of `repeats` runs: on a shared 2-core machine interference only ever adds time.
    CUDA work is waited for before the clock stops."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def _model(backbone: str, model_dir: str | None, device: torch.device) -> MatryoshkaModel:
    """The model to measure, in fp32 on `device`: a checkpoint directory's, or the backbone with heads."""
    if model_dir is not None:
        return load_checkpoint(model_dir, device=device)
    loaded = load_backbone(backbone, torch.float32)
    loaded.model.to(device)
    return MatryoshkaModel.from_backbone(loaded, scoring="heads")


def run(
    backbone: str = DEFAULT_BACKBONE,
    pairs: int = 32,
    tokens: int = 256,
    repeats: int = 3,
    dtypes: tuple[str, ...] = ("fp32", "bf16"),
    *,
    device: str = "cpu",
    model_dir: str | None = None,
) -> dict[str, Any]:
    """Measure and return the figures (see module docstring)."""
    where = torch.device(device)
    model = _model(backbone, model_dir, where)
    hf: Any = model.backbone.hf_model
    rng = random.Random(0)
    query = "how does early exit save compute in a re-ranking model"
    texts = [" ".join(rng.choice(WORDS) for _ in range(tokens * 2)) for _ in range(pairs)]
    overhead = len(model.encode(query, [""], Truncation())[0].input_ids)
    truncation = Truncation(max_query_tokens=64, max_passage_tokens=tokens - overhead)
    encoded = model.encode(query, texts, truncation)
    assert {len(p.input_ids) for p in encoded} == {tokens}, "every row must be exactly `tokens` long"
    input_ids = torch.tensor([p.input_ids for p in encoded], device=where)
    mask = torch.ones_like(input_ids)
    inner = hf.get_decoder() if model.backbone.family == "decoder" else hf
    out: dict[str, Any] = {
        "model": model.info.name,
        "device": str(where),
        "pairs": pairs,
        "tokens": tokens,
        "threads": torch.get_num_threads(),
        "repeats": repeats,
    }
    for name in dtypes:
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
        hf.to(dtype)
        model.scorer.to(torch.float32)
        executor = Executor(model, max_batch_rows=pairs, max_batch_tokens=pairs * tokens)

        def engine(plan: Plan, ex: Executor = executor) -> JobResult:
            (result,) = ex.run([Job(query, texts, plan.resolve(model.info), truncation)])
            assert isinstance(result, JobResult)
            return result

        def plain() -> None:
            with torch.inference_mode():
                inner(input_ids=input_ids, attention_mask=mask, use_cache=False)

        plain()  # warm-up both paths
        engine(Plan())
        plain_s: list[float] = []
        full_s: list[float] = []
        for _ in range(repeats):  # interleaved, so drift hits both alike
            plain_s.append(_best_seconds(plain, 1))
            full_s.append(_best_seconds(partial(engine, Plan()), 1))
        figures: dict[str, Any] = {
            "plain_pairs_per_s": pairs / min(plain_s),
            "engine_full_pairs_per_s": pairs / min(full_s),
        }
        figures["ratio_full_vs_plain"] = figures["engine_full_pairs_per_s"] / figures["plain_pairs_per_s"]
        figures["configs"] = {}
        for label, plan in configs(model.info).items():
            usage = engine(plan).usage
            seconds = _best_seconds(partial(engine, plan), repeats)
            figures["configs"][label] = {
                "pairs_per_s": pairs / seconds,
                "speedup_vs_full": min(full_s) / seconds,
                "flops_saved": usage.flops_saved,
            }
        out[name] = figures
    hf.to(torch.float32)
    return out
