"""Teacher runs: scores cached as a TREC run, resumed after an interruption, fused across teachers."""

from __future__ import annotations

from pathlib import Path

import pytest

from matryoshka.data.datasets import load_collection, read_run
from matryoshka.train.teacher_run import ScoreFn, fuse_runs, progress_file, read_scores, score_run

QUERIES = {"q1": "alpha", "q2": "beta", "q3": "gamma"}
CANDIDATES = {"q1": ["d1", "d2"], "q2": ["d2", "d3"], "q3": ["d1", "d3"]}
PASSAGES = {"d1": "one", "d2": "two two", "d3": "three three three"}


def length_teacher(calls: list[str]) -> ScoreFn:
    def score(query: str, passages: list[str]) -> list[float]:
        calls.append(query)
        return [float(len(p)) for p in passages]

    return score


def test_scores_are_written_as_a_trec_run(tmp_path: Path) -> None:
    calls: list[str] = []
    run = score_run(tmp_path / "t.trec", QUERIES, CANDIDATES, PASSAGES, length_teacher(calls))
    assert run["q2"] == {"d2": 7.0, "d3": 17.0}
    lines = (tmp_path / "t.trec").read_text().splitlines()
    assert lines[0].split() == ["q1", "Q0", "d2", "1", "7.000000", "teacher"]
    assert calls == ["alpha", "beta", "gamma"]


def test_a_rerun_scores_only_missing_queries_and_drops_a_torn_write(tmp_path: Path) -> None:
    path = tmp_path / "t.trec"
    calls: list[str] = []
    subset = {"q1": CANDIDATES["q1"], "q2": CANDIDATES["q2"]}
    score_run(path, QUERIES, subset, PASSAGES, length_teacher(calls))
    with path.open("a") as f:
        f.write("q3 Q0 d1 1 3.0 teacher\nq3 Q0 d3")  # killed mid-query: no progress record
    calls.clear()
    run = score_run(path, QUERIES, CANDIDATES, PASSAGES, length_teacher(calls))
    assert calls == ["gamma"]
    assert set(run) == {"q1", "q2", "q3"}
    assert len(path.read_text().splitlines()) == 6
    assert len(progress_file(path).read_text().splitlines()) == 3


def test_a_teacher_that_drops_passages_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="1 scores for 2 passages"):
        score_run(tmp_path / "t.trec", QUERIES, CANDIDATES, PASSAGES, lambda q, p: [0.0])


def test_fusion_z_scores_each_teacher_per_query() -> None:
    a = {"q1": {"d1": 1.0, "d2": 3.0, "d3": 2.0}}
    b = {"q1": {"d1": 300.0, "d2": 100.0, "d3": 200.0}, "q2": {"d1": 1.0}}
    fused = fuse_runs([a, b], [0.5, 0.5])
    assert set(fused) == {"q1"}
    assert fused["q1"]["d3"] == pytest.approx(0.0)
    assert fused["q1"]["d1"] == pytest.approx(fused["q1"]["d2"])
    assert fuse_runs([a, b], [1.0, 0.0])["q1"]["d2"] == pytest.approx(1.224744871)
    with pytest.raises(ValueError, match="one weight per run"):
        fuse_runs([a], [0.5, 0.5])


def test_the_run_reads_back_with_the_collection_reader(tmp_path: Path) -> None:
    root = tmp_path / "c"
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text(
        "".join(f'{{"_id": "{d}", "text": "{t}"}}\n' for d, t in PASSAGES.items())
    )
    (root / "queries.jsonl").write_text(
        "".join(f'{{"_id": "{q}", "text": "{t}"}}\n' for q, t in QUERIES.items())
    )
    run = score_run(tmp_path / "t.trec", QUERIES, CANDIDATES, PASSAGES, lambda q, p: [1.0] * len(p))
    assert read_run(tmp_path / "t.trec", load_collection(root)) == run == read_scores(tmp_path / "t.trec")
