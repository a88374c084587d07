"""Record once, replay offline: a plan replayed on a recording (eval/replay.py) exits, ranks and costs
exactly as the engine running that plan does; the fusion fit picks the weight the data supports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from matryoshka.engine.executor import Executor
from matryoshka.engine.job import Job, JobResult
from matryoshka.engine.plan import CascadeExit, ConfidenceExit, FirstStageExit, Plan
from matryoshka.engine.reranker import Reranker
from matryoshka.eval.layer_scores import QueryCandidates, record, save
from matryoshka.eval.replay import fit_fusion, load_recording, replay, replay_query, replay_table
from matryoshka.model.matryoshka_model import MatryoshkaModel
from matryoshka.model.width import WidthTarget
from tests.conftest import PASSAGES

QUERIES = ["what is the capital of france", "where is the cat"]
FIRST_STAGE = [float((7 * i) % len(PASSAGES)) for i in range(len(PASSAGES))]


def candidates() -> list[QueryCandidates]:
    docs = [(f"d{i}", p, FIRST_STAGE[i]) for i, p in enumerate(PASSAGES)]
    return [QueryCandidates(f"q{n}", q, docs) for n, q in enumerate(QUERIES)]


def recorded(model: MatryoshkaModel, tmp_path: Path, width: dict[int, WidthTarget] | None = None):  # type: ignore[no-untyped-def]
    rows = record(Reranker(model), candidates(), width, queries_per_batch=2)
    meta = {"head_layers": list(model.info.head_layers), "num_layers": model.info.num_layers, "width": {}}
    save(rows, tmp_path / "rec.json", meta)
    return load_recording(tmp_path / "rec.json")


def engine(model: MatryoshkaModel, plan: Plan, first_stage: bool) -> list[JobResult]:
    resolved = plan.resolve(model.info)
    jobs = [Job(q, PASSAGES, resolved, first_stage=FIRST_STAGE if first_stage else None) for q in QUERIES]
    results = Executor(model).run(jobs)
    assert all(isinstance(r, JobResult) for r in results)
    return results  # type: ignore[return-value]


@pytest.mark.parametrize(
    "plan",
    [
        Plan(depth=2),
        Plan(),
        Plan(confidence=ConfidenceExit(relevant=0.6, irrelevant=0.45, min_layer=2)),
        Plan(cascade=CascadeExit(top_n=3, margin=0.0, patience=9, min_layer=2)),
        Plan(
            width={1: WidthTarget(ratio=2.0)},
            cascade=CascadeExit(top_n=3, margin=0.0, patience=9, min_layer=3),
        ),
        Plan(first_stage=FirstStageExit(top_n=3)),
        Plan(
            first_stage=FirstStageExit(top_n=4),
            cascade=CascadeExit(top_n=2, margin=0.0, patience=9, min_layer=2),
        ),
    ],
    ids=["depth", "full", "confidence", "cascade", "width+cascade", "first-stage", "first-stage+cascade"],
)
def test_a_replayed_plan_is_the_engine_run(llama_model: MatryoshkaModel, tmp_path: Path, plan: Plan) -> None:
    rec = recorded(llama_model, tmp_path, dict(plan.width))
    weights = {2: 0.3, 3: 0.6, 4: 0.9}
    llama_model.fusion = weights
    try:
        for fused in (False, True):
            results = engine(llama_model, plan, fused)
            got = replay(rec, plan.resolve(llama_model.info), weights if fused else None)
            for n, result in enumerate(results):
                keys = {
                    f"d{o.index}": (o.fused if fused else o.probability, o.exit_layer)
                    for o in result.outcomes
                }
                layers = got.exit_layers[n * len(PASSAGES) : (n + 1) * len(PASSAGES)]
                for (doc, key), layer in zip(got.run[f"q{n}"].items(), layers, strict=True):
                    assert key == pytest.approx(keys[doc][0], abs=1e-4)
                    assert layer == keys[doc][1]
            assert got.flops == pytest.approx(sum(r.usage.flops for r in results), rel=1e-6)
            assert got.full_flops == pytest.approx(sum(r.usage.full_flops for r in results), rel=1e-6)
    finally:
        llama_model.fusion = {}


def test_fusion_fit_and_table(llama_model: MatryoshkaModel, tmp_path: Path) -> None:
    rec = recorded(llama_model, tmp_path)
    # judged relevant: the first stage's top document of each query; a random head cannot know it
    best = max(range(len(PASSAGES)), key=lambda i: FIRST_STAGE[i])
    qrels = {f"q{n}": {f"d{best}": 1} for n in range(len(QUERIES))}
    weights = fit_fusion([(rec, qrels)], grid=(0.0, 0.5, 1.0))
    assert set(weights) == set(llama_model.info.head_layers)
    for layer, w in weights.items():
        head_first = all(
            max(rows, key=lambda r: r["prob"][str(layer)])["doc"] == f"d{best}"
            for rows in rec.queries.values()
        )
        # where the head alone misses the judged document, the fit leans on the first stage, which has it
        assert w == 1.0 if head_first else w < 1.0
    lines = replay_table(rec, qrels, weights, (0.0,), (0.1,), (2,))
    assert lines[1].split()[-1] == "1.0000"  # the first stage: nDCG@10 of 1
    assert len(lines) == 2 + len(llama_model.info.head_layers) + 2 + 2
    # first stage top 2 (no scores replayed: the input order): two documents run to full depth, at the
    # cost of a request of only those two, and the rest never start
    last = llama_model.info.num_layers
    cut_plan = Plan(depth=last, first_stage=FirstStageExit(top_n=2))
    for rows in rec.queries.values():
        _, layers, flops, _ = replay_query(rows, cut_plan, rec.head_layers, None)
        _, _, flops_two, _ = replay_query(rows[:2], Plan(depth=last), rec.head_layers, None)
        assert layers == [last, last, 0, 0, 0]
        assert flops == pytest.approx(flops_two, rel=1e-12)
    cut = next(line for line in lines if line.startswith("first stage top 2 "))
    assert cut.split()[-2] == f"{replay(rec, cut_plan).flops_saved:.1%}"


def test_the_table_says_what_share_of_the_full_gain_a_plan_keeps(
    llama_model: MatryoshkaModel, tmp_path: Path
) -> None:
    rec = recorded(llama_model, tmp_path)
    # judged relevant: the document the full plan ranks the most places above the first stage's rank
    last = llama_model.info.num_layers

    def promoted(rows: list[dict[str, Any]]) -> str:
        by_head = sorted(rows, key=lambda r: -r["prob"][str(last)])
        by_first = sorted(rows, key=lambda r: -r["first_stage"])
        return max(rows, key=lambda r: by_first.index(r) - by_head.index(r))["doc"]

    qrels = {q: {promoted(rows): 1} for q, rows in rec.queries.items()}
    weights = {layer: 1.0 for layer in llama_model.info.head_layers}  # fused = the head's order
    lines = replay_table(rec, qrels, weights, (0.0,), (0.1,), (1,))
    first = float(lines[1].split()[-1])
    full = next(line for line in lines if line.startswith(f"depth {last} ")).split()
    assert float(full[-4]) > first  # a gain to keep a share of
    assert full[-3] == "100.0%"
    gain = float(full[-4]) - first
    for line in lines[2:]:  # (from nDCG printed to 4 places, the share to 1)
        fused, kept = float(line.split()[-4]), line.split()[-3]
        assert float(kept.rstrip("%")) == pytest.approx(100 * (fused - first) / gain, rel=0.01, abs=0.2)
