"""`matryoshka eval` and `matryoshka eval sweep` through typer's CliRunner, on the tiny model."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from matryoshka import cli
from matryoshka.cli import eval as eval_cli
from matryoshka.data.datasets import read_run
from matryoshka.engine.reranker import DEFAULT_BACKBONE, Reranker
from matryoshka.eval.metrics import evaluate
from matryoshka.eval.rerank_run import prepare
from tests.unit.conftest import RUN_FILE

runner = CliRunner()
METRICS = {"ndcg@10", "mrr@10", "recall@100", "map"}


@pytest.fixture
def loaded(monkeypatch: pytest.MonkeyPatch, tiny_reranker: Reranker) -> list[tuple[str, str, str | None]]:
    """Make the CLI load the tiny re-ranker; returns the (model, dtype, scoring) it was asked for."""
    calls: list[tuple[str, str, str | None]] = []

    def fake_loader(model: str, dtype: str, scoring: str | None, artifact: str | None = None) -> Reranker:
        calls.append((model, dtype, scoring))
        return tiny_reranker

    monkeypatch.setattr(eval_cli, "load_reranker", fake_loader)
    return calls


def invoke(*args: str | Path) -> tuple[int, str, str]:
    result = runner.invoke(cli.app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def test_eval_json_is_keyed_by_system(
    eval_collection: Path, tmp_path: Path, loaded: list[tuple[str, str, str | None]]
) -> None:
    out = tmp_path / "out"
    code, stdout, stderr = invoke(
        "eval", "--data", eval_collection, "--first-stage", RUN_FILE, "--top-k", "3", "--out", out, "--json"
    )
    assert code == 0, stderr
    report = json.loads(stdout)
    assert list(report) == ["first_stage", "full", "light", "adaptive"]
    for name, entry in report.items():
        assert set(entry) >= METRICS
        assert entry["queries"] == 3
        assert Path(entry["run_file"]) == out / f"{name}.trec"
        assert read_run(entry["run_file"])
    for name in ("full", "light", "adaptive"):
        assert {"flops_saved", "pairs_per_s", "rel_perf", "plan", "exit_reasons"} <= set(report[name])
    assert report["first_stage"]["relevance_level"] == 2
    assert loaded == [(DEFAULT_BACKBONE, "auto", None)]
    data = prepare(eval_collection, first_stage_spec=RUN_FILE, top_k=3)
    expected = evaluate(data.candidates, data.qrels, relevance_level=2)
    assert {m: report["first_stage"][m] for m in METRICS} == expected


def test_eval_table_and_options(eval_collection: Path, tmp_path: Path, loaded: list) -> None:
    code, stdout, stderr = invoke(
        "eval",
        "--data",
        eval_collection,
        "--first-stage",
        eval_collection / RUN_FILE,
        "--top-k",
        "2",
        "--max-queries",
        "2",
        "--plans",
        "light",
        "--relevance-level",
        "1",
        "--dtype",
        "bfloat16",
        "--scoring",
        "heads",
        "--out",
        tmp_path / "o",
    )
    assert code == 0, stderr
    lines = stdout.splitlines()
    assert lines[0].startswith("tiny-beir test: 2 queries, top-2 of ")
    assert "relevance level 1" in lines[0]
    assert [line.split()[0] for line in lines[2:4]] == ["first_stage", "light"]
    assert loaded == [(DEFAULT_BACKBONE, "bfloat16", "heads")]
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["first_stage.trec", "light.trec"]


def test_first_stage_only_loads_no_model(eval_collection: Path, tmp_path: Path, monkeypatch) -> None:
    def no_loading(*args: object) -> Reranker:
        raise AssertionError("no model should be loaded for --plans ''")

    monkeypatch.setattr(eval_cli, "load_reranker", no_loading)
    code, stdout, stderr = invoke(
        "eval",
        "--data",
        eval_collection,
        "--first-stage",
        RUN_FILE,
        "--plans",
        "",
        "--out",
        tmp_path,
        "--json",
    )
    assert code == 0, stderr
    assert list(json.loads(stdout)) == ["first_stage"]


def test_eval_errors(eval_collection: Path, tmp_path: Path, loaded: list) -> None:
    code, _, stderr = invoke("eval", "--data", eval_collection, "--plans", "full,heavy")
    assert code == 2
    assert "unknown plan(s) heavy" in stderr
    code, _, stderr = invoke("eval", "--data", tmp_path / "nowhere", "--plans", "")
    assert code == 2
    assert "collection folder not found" in stderr
    code, _, stderr = invoke("eval", "--split", "test")
    assert code == 2
    assert "--data" in stderr
    code, _, stderr = invoke(
        "eval",
        "--data",
        eval_collection,
        "--first-stage",
        RUN_FILE,
        "--exit-min-layer",
        "9",
        "--out",
        tmp_path,
    )
    assert code == 2
    assert "confidence.min_layer" in stderr


def test_sweep_writes_csv_and_png(eval_collection: Path, tmp_path: Path, loaded: list) -> None:
    out = tmp_path / "sweep"
    code, stdout, stderr = invoke(
        "eval",
        "sweep",
        "--data",
        eval_collection,
        "--first-stage",
        RUN_FILE,
        "--top-k",
        "3",
        "--thresholds",
        "0.1,0.5,0.9",
        "--out",
        out,
    )
    assert code == 0, stderr
    with (out / "sweep.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    families = [r["family"] for r in rows]
    # tiny model, 4 layers: first stage + 4 depths + 3 widths + 3 joint + 3 thresholds + 2 lean
    # + 3 first-stage exits
    expected = ["first_stage"] + ["depth"] * 4 + ["width"] * 3 + ["joint"] * 3 + ["exit"] * 3
    assert families == expected + ["lean"] * 2 + ["first_stage_exit"] * 3
    assert [r["exit_irrelevant"] for r in rows[-8:-5]] == ["0.1", "0.5", "0.9"]
    cuts = rows[-3:]
    assert [r["plan"] for r in cuts] == [f"depth 4, first stage top {k}" for k in (20, 30, 50)]
    # top 3 re-ranked: every pool is within n, so each cut runs the full plan's documents
    assert all(r["ndcg@10"] == rows[1]["ndcg@10"] and float(r["flops_saved"]) == 0.0 for r in cuts)
    assert (out / "sweep.png").stat().st_size > 10_000
    assert f"wrote {out / 'sweep.csv'}" in stdout


def test_eval_long_compares_truncation_with_chunked_readings(
    eval_collection: Path, tmp_path: Path, loaded: list
) -> None:
    out = tmp_path / "long"
    args = ["eval", "long", "--data", eval_collection, "--top-k", "3", "--truncate-tokens", "3"]
    code, stdout, stderr = invoke(
        *args, "--chunk-tokens", "3", "--chunk-overlap", "1", "--out", out, "--json"
    )
    assert code == 0, stderr
    report = json.loads(stdout)
    assert list(report) == ["first_stage", "truncate-3", "chunk-3/1-max", "chunk-3/1-first"]
    cut, windows, first = report["truncate-3"], report["chunk-3/1-max"], report["chunk-3/1-first"]
    assert cut["rows_per_query"] == first["rows_per_query"] > 0  # one row a candidate
    assert cut["pairs"] == first["pairs"] == windows["pairs"]
    assert windows["rows_per_query"] > cut["rows_per_query"]  # texts of 5-8 tokens: 2-3 windows each
    assert windows["gflops_per_query"] > cut["gflops_per_query"]
    assert {p.name for p in out.iterdir()} == {
        "truncate-3.trec",
        "chunk-3-1-max.trec",
        "chunk-3-1-first.trec",
    }
    code, stdout, _ = invoke(*args, "--aggregates", "mean", "--out", out)
    assert code == 0
    assert "chunk-128/32-mean" in stdout
    assert "longer than 3" in stdout
    code, _, stderr = invoke(*args, "--aggregates", "maxp")
    assert code != 0
    assert "max, first or mean" in stderr
