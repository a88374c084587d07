"""The evaluation report: query selection, re-ranked runs, rel perf and the sweep."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from matryoshka.data.datasets import read_run, truncate_run
from matryoshka.engine.named_plans import light_plan, named_plan
from matryoshka.engine.plan import ConfidenceExit, Plan
from matryoshka.engine.reranker import Reranker
from matryoshka.eval.metrics import evaluate
from matryoshka.eval.report import SystemResult, build_report, compare, format_table, rel_perf
from matryoshka.eval.rerank_run import auto_queries_per_batch, default_relevance_level, prepare, rerank_run
from matryoshka.eval.sweep import CSV_FIELDS, run_sweep, sweep_points
from matryoshka.model.matryoshka_model import ModelInfo
from matryoshka.model.width import WidthTarget
from tests.unit.conftest import RUN_FILE

METRICS = ["ndcg@10", "mrr@10", "recall@100", "map"]


def info(num_layers: int, head_layers: tuple[int, ...] | None = None) -> ModelInfo:
    heads = head_layers or tuple(range(1, num_layers + 1))
    return ModelInfo("m", "decoder", num_layers, 64, heads, "heads", "v1", "fp", "identity")


# -- query selection and the first stage ----------------------------------------------------------


def test_queries_are_judged_and_in_the_run_in_file_order(eval_collection: Path) -> None:
    data = prepare(eval_collection, first_stage_spec=RUN_FILE, top_k=3)
    assert data.query_ids == ["q1", "q2", "q3"]  # q4 is not in the run file, q5 is not judged
    assert list(data.candidates) == ["q1", "q2", "q3"]
    assert all(len(c) <= 3 for c in data.candidates.values())
    assert set(data.candidates["q3"]) == {"d6", "d5", "d1"}  # exactly the top 3
    assert data.relevance_level == 2  # grades reach 3
    assert prepare(eval_collection, first_stage_spec=RUN_FILE, max_queries=2).query_ids == ["q1", "q2"]


def test_bm25_answers_every_judged_query(eval_collection: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MATRYOSHKA_CACHE_DIR", str(tmp_path / "cache"))
    data = prepare(eval_collection, first_stage_spec="bm25", top_k=5)
    assert data.query_ids == ["q1", "q2", "q3", "q4"]


def test_default_relevance_level() -> None:
    assert default_relevance_level({"q": {"a": 3, "b": 0}}) == 2
    assert default_relevance_level({"q": {"a": 1, "b": 0}}) == 1
    assert default_relevance_level({"q": {"a": 2}}) == 1


def test_first_stage_metrics_equal_evaluate_on_the_run(
    tiny_reranker: Reranker, eval_collection: Path
) -> None:
    data = prepare(eval_collection, first_stage_spec=RUN_FILE, top_k=3)
    report = compare(tiny_reranker, data, {"full": Plan()})
    qrels = data.collection.qrels("test", unknown_docs="keep")
    direct = evaluate(truncate_run(read_run(eval_collection / RUN_FILE), 3), qrels, relevance_level=2)
    assert {m: report["first_stage"][m] for m in METRICS} == direct
    assert report["first_stage"]["queries"] == 3


# -- re-ranking ---------------------------------------------------------------------------------


def test_rerank_run_scores_exactly_the_top_k(tiny_reranker: Reranker, eval_collection: Path) -> None:
    data = prepare(eval_collection, first_stage_spec=RUN_FILE, top_k=3)
    result = rerank_run(
        tiny_reranker, data.collection, data.candidates, data.query_ids, Plan(), top_k=data.top_k, fuse=False
    )
    assert {q: set(r) for q, r in result.run.items()} == {q: set(c) for q, c in data.candidates.items()}
    assert all(0.0 < p < 1.0 for ranking in result.run.values() for p in ranking.values())
    # fused with the first stage (the default) under no fusion weights: the heads' own order
    fused = rerank_run(
        tiny_reranker, data.collection, data.candidates, data.query_ids, Plan(), top_k=data.top_k
    )
    for qid, ranking in result.run.items():
        assert sorted(ranking, key=lambda d: -ranking[d]) == sorted(
            fused.run[qid], key=lambda d: -fused.run[qid][d]
        )
    u = result.usage
    assert (u.queries, u.pairs) == (3, 9)
    assert u.flops == pytest.approx(u.full_flops)
    assert u.flops_saved == pytest.approx(0.0, abs=1e-12)
    assert u.mean_exit_layer == 4
    assert u.exit_reasons == {"depth": 9}
    assert u.seconds > 0
    assert u.pairs_per_second > 0


def test_batching_queries_changes_nothing_but_time(tiny_reranker: Reranker, eval_collection: Path) -> None:
    data = prepare(eval_collection, first_stage_spec=RUN_FILE, top_k=4)
    plan = light_plan(tiny_reranker.info)
    runs = [
        rerank_run(
            tiny_reranker,
            data.collection,
            data.candidates,
            data.query_ids,
            plan,
            top_k=4,
            queries_per_batch=n,
        )
        for n in (1, 2, 3)
    ]
    for other in runs[1:]:
        assert other.run.keys() == runs[0].run.keys()
        for qid, ranking in runs[0].run.items():
            assert other.run[qid] == pytest.approx(ranking, abs=1e-5)
        assert other.usage.flops == pytest.approx(runs[0].usage.flops)


def test_auto_batching_fills_several_buckets_or_sends_one_query() -> None:
    assert auto_queries_per_batch(100, 43, 64) == 4  # ~6 buckets of 64 rows
    assert auto_queries_per_batch(10, 300, 64) == 39
    assert auto_queries_per_batch(10, 24, 64) == 39  # 240 rows still fill 3 buckets
    assert auto_queries_per_batch(10, 3, 64) == 1  # 30 rows would share one padded bucket
    assert auto_queries_per_batch(1000, 5, 64) == 1


def test_query_without_candidates_gets_an_empty_ranking(
    tiny_reranker: Reranker, eval_collection: Path
) -> None:
    data = prepare(eval_collection, first_stage_spec=RUN_FILE, top_k=3)
    candidates = {**data.candidates, "q2": {}}
    result = rerank_run(
        tiny_reranker, data.collection, candidates, data.query_ids, Plan(), top_k=3, queries_per_batch=2
    )
    assert result.run["q2"] == {}
    assert set(result.run["q3"]) == set(candidates["q3"])  # the batch after the empty query still ran
    assert (result.usage.queries, result.usage.pairs) == (3, 6)


def test_a_trec_run_per_system_is_written_and_rereads(
    tiny_reranker: Reranker, eval_collection: Path, tmp_path: Path
) -> None:
    data = prepare(eval_collection, first_stage_spec=RUN_FILE, top_k=3)
    plans = {name: named_plan(name, tiny_reranker.info) for name in ("full", "light", "adaptive")}
    out = tmp_path / "runs-out"
    report = compare(tiny_reranker, data, plans, out_dir=out)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["first_stage.trec", "full.trec", "light.trec", "adaptive.trec"]
    )
    assert read_run(out / "first_stage.trec") == data.candidates
    for name in plans:
        path = out / f"{name}.trec"
        assert report[name]["run_file"] == str(path)
        reread = read_run(path, data.collection)
        assert {q: set(r) for q, r in reread.items()} == {q: set(c) for q, c in data.candidates.items()}
        # the file holds the evaluated ranking: its metrics are the report's
        metrics = evaluate(reread, data.qrels, relevance_level=2)
        assert metrics == pytest.approx({m: report[name][m] for m in METRICS})
        assert path.read_text().split("\n", 1)[0].endswith(f"matryoshka-{name}")


def test_report_entries(tiny_reranker: Reranker, eval_collection: Path) -> None:
    data = prepare(eval_collection, first_stage_spec=RUN_FILE, top_k=3)
    plans = {name: named_plan(name, tiny_reranker.info) for name in ("full", "light")}
    report = compare(tiny_reranker, data, plans)
    assert list(report) == ["first_stage", "full", "light"]
    for entry in report.values():
        assert set(METRICS) <= set(entry)
        assert set(entry["rel_perf"]) == set(METRICS)
    assert report["light"]["plan"]["depth"] == 2
    assert report["light"]["flops_saved"] > 0.4  # half depth and a merge
    assert report["full"]["flops_saved"] == pytest.approx(0.0, abs=1e-12)
    table = format_table(report, "title line")
    assert table.splitlines()[0] == "title line"
    assert [line.split()[0] for line in table.splitlines()[2:]] == ["first_stage", "full", "light"]


# -- rel perf -------------------------------------------------------------------------------------


def test_rel_perf_arithmetic() -> None:
    assert rel_perf(0.6, 0.5, 0.7) == pytest.approx(0.5)
    assert rel_perf(0.7, 0.5, 0.7) == pytest.approx(1.0)
    assert rel_perf(0.5, 0.5, 0.7) == 0.0
    assert rel_perf(0.45, 0.5, 0.7) == pytest.approx(-0.25)  # worse than the first stage
    assert rel_perf(0.8, 0.5, 0.7) == pytest.approx(1.5)  # better than full
    assert rel_perf(0.6, 0.5, 0.5) is None  # full gained nothing: no share to speak of


def test_rel_perf_in_the_report() -> None:
    first = SystemResult("first_stage", {"ndcg@10": 0.50, "mrr@10": 0.60})
    full = SystemResult("full", {"ndcg@10": 0.70, "mrr@10": 0.60})
    light = SystemResult("light", {"ndcg@10": 0.65, "mrr@10": 0.70})
    report = build_report([first, full, light])
    assert report["light"]["rel_perf"]["ndcg@10"] == pytest.approx(0.75)  # 0.15 of 0.20
    assert report["light"]["rel_perf"]["mrr@10"] is None  # full's MRR equals the first stage's
    assert report["full"]["rel_perf"]["ndcg@10"] == pytest.approx(1.0)
    assert report["first_stage"]["rel_perf"]["ndcg@10"] == 0.0
    without_full = build_report([first, light])
    assert without_full["light"]["rel_perf"]["ndcg@10"] is None


# -- sweep ----------------------------------------------------------------------------------------


def test_sweep_points_for_a_30_layer_model() -> None:
    points = sweep_points(info(30), thresholds=(0.01, 0.1))
    labels = {
        family: [p.label for p in points if p.family == family] for family in ("depth", "width", "joint")
    }
    assert points[0].plan == Plan(depth=30)  # the full plan runs first: the time reference
    assert labels["depth"] == ["depth 30", "depth 5", "depth 10", "depth 15", "depth 20", "depth 25"]
    assert labels["width"] == [f"width /2 after {layer}" for layer in (5, 10, 15, 20, 25)]
    assert labels["joint"][2] == "depth 15 + width /2 after 7"  # the light plan's shape
    exits = [p.plan.confidence for p in points if p.family == "exit"]
    assert exits == [ConfidenceExit(0.99, 0.01, 15), ConfidenceExit(0.99, 0.1, 15)]
    lean = [p for p in points if p.family == "lean"]
    assert [p.label for p in lean] == [
        "width /2 after 5, /4 after 15",
        "width /2 after 10, /4 after 20",
        "width /2 after 15, /4 after 25",
        "lean-short",
    ]
    assert lean[1].plan.width == {10: WidthTarget(ratio=2.0), 20: WidthTarget(ratio=2.0)}
    assert lean[3].plan == Plan(depth=25, width=lean[1].plan.width)


def test_sweep_writes_csv_and_png(tiny_reranker: Reranker, eval_collection: Path, tmp_path: Path) -> None:
    data = prepare(eval_collection, first_stage_spec=RUN_FILE, top_k=3)
    points = sweep_points(tiny_reranker.info, thresholds=(0.2, 0.6))
    out = tmp_path / "sweep"
    run_sweep(tiny_reranker, data, points, out)
    with (out / "sweep.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == list(CSV_FIELDS)
    assert [(r["family"], r["label"]) for r in rows] == [("first_stage", RUN_FILE)] + [
        (p.family, p.label) for p in points
    ]
    # 4 layers: depths 4,1,2,3; width after 1,2,3; joint at depths 2,3,4; two thresholds
    assert [r["family"] for r in rows].count("depth") == 4
    assert [r["family"] for r in rows].count("width") == 3
    assert [r["family"] for r in rows].count("joint") == 3
    assert [r["family"] for r in rows].count("exit") == 2
    assert [r["family"] for r in rows].count("lean") == 2  # 4 layers: /2 after 1 and 3, lean-short
    first = evaluate(data.candidates, data.qrels, relevance_level=2)
    assert float(rows[0]["ndcg@10"]) == pytest.approx(first["ndcg@10"])
    assert rows[0]["flops_saved"] == ""
    full = rows[1]
    assert (full["depth"], float(full["flops_saved"]), float(full["time_saved"])) == ("4", 0.0, 0.0)
    assert float(rows[2]["flops_saved"]) == pytest.approx(0.75, abs=0.05)  # depth 1 of 4
    png = (out / "sweep.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    assert len(png) > 10_000
