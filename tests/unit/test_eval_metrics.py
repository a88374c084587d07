"""Metrics through ir_measures on a tiny hand-checked fixture (graded qrels 0-3)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from matryoshka.data.datasets import Qrels, Run, load_collection
from matryoshka.eval.metrics import evaluate, evaluate_per_query

# Graded judgments: q1 has grades 3/2/1/0, q2 has one unretrieved grade-2 doc, q3 is never in the run.
QRELS = [("q1", "d1", 3), ("q1", "d2", 2), ("q1", "d3", 0), ("q1", "d4", 1)]
QRELS += [("q2", "d5", 1), ("q2", "d6", 0), ("q2", "d8", 2), ("q3", "d7", 3)]

# q1 ranks [d3:0, d4:1, d1:3, d6:unjudged, d2:2]; q2 ranks [d6:0, d7:unjudged, d5:1]; q3 is absent.
RUN: Run = {
    "q1": {"d3": 5.0, "d4": 4.0, "d1": 3.0, "d6": 2.0, "d2": 1.0},
    "q2": {"d6": 3.0, "d7": 2.0, "d5": 1.0},
}

EXACT = 1e-12  # the literals below are the hand arithmetic, printed to full double precision

# nDCG@10, ir_measures/trec_eval convention: gain = grade, discount = log2(rank + 1), ideal over all judged.
#   q1: DCG  = 1/log2(3) + 3/log2(4) + 2/log2(6) = 0.6309297535714575 + 1.5 + 0.7737056144690831
#            = 2.904635368040541
#       IDCG = 3/log2(2) + 2/log2(3) + 1/log2(4) = 3 + 1.2618595071429148 + 0.5 = 4.7618595071429155
#       nDCG = 2.904635368040541 / 4.7618595071429155 = 0.6099792242260635
#   q2: DCG  = 1/log2(4) = 0.5;  IDCG = 2/log2(2) + 1/log2(3) = 2.6309297535714578
#       nDCG = 0.5 / 2.6309297535714578 = 0.19004688335796713
#   mean over q1, q2 (q3 is not in the run) = 0.40001305379201535
NDCG_Q1 = 0.6099792242260635
NDCG_Q2 = 0.19004688335796713
NDCG_MEAN = 0.40001305379201535


def write_fixture(root: Path) -> Path:
    """A BEIR-format folder: 8 docs, 3 queries, graded qrels/test.tsv."""
    root.mkdir(parents=True)
    docs = [{"_id": f"d{i}", "title": f"title {i}", "text": f"text {i}"} for i in range(1, 9)]
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    queries = [{"_id": f"q{i}", "text": f"query {i}"} for i in range(1, 4)]
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (root / "qrels").mkdir()
    lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{g}" for q, d, g in QRELS]
    (root / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def qrels(tmp_path: Path) -> Qrels:
    """The fixture's test qrels, read from disk."""
    return load_collection(write_fixture(tmp_path / "tiny")).qrels("test")


def test_relevance_level_1(qrels: Qrels) -> None:
    result = evaluate(RUN, qrels)
    assert list(result) == ["ndcg@10", "mrr@10", "recall@100", "map"]
    assert result["ndcg@10"] == pytest.approx(NDCG_MEAN, abs=EXACT)
    # RR@10 (grade >= 1): q1 first relevant d4 at rank 2 -> 1/2; q2 d5 at rank 3 -> 1/3; mean 5/12
    assert result["mrr@10"] == pytest.approx(0.4166666666666667, abs=EXACT)
    # R@100 (grade >= 1): q1 3 of {d1,d2,d4} -> 1; q2 1 of {d5,d8} -> 1/2; mean 3/4
    assert result["recall@100"] == pytest.approx(0.75, abs=EXACT)
    # AP (grade >= 1): q1 hits at ranks 2,3,5 -> (1/2 + 2/3 + 3/5)/3 = 53/90;
    #                  q2 hit at rank 3, d8 never retrieved -> (1/3)/2 = 1/6; mean (53/90 + 15/90)/2 = 17/45
    assert result["map"] == pytest.approx(0.37777777777777777, abs=EXACT)


def test_relevance_level_2(qrels: Qrels) -> None:
    result = evaluate(RUN, qrels, relevance_level=2)
    # nDCG keeps graded gains whatever the relevance level
    assert result["ndcg@10"] == pytest.approx(NDCG_MEAN, abs=EXACT)
    # RR@10 (grade >= 2): q1 first is d1 at rank 3 -> 1/3; q2 only d8 (not retrieved) -> 0; mean 1/6
    assert result["mrr@10"] == pytest.approx(0.16666666666666666, abs=EXACT)
    # R@100 (grade >= 2): q1 {d1,d2} both retrieved -> 1; q2 {d8} -> 0; mean 1/2
    assert result["recall@100"] == pytest.approx(0.5, abs=EXACT)
    # AP (grade >= 2): q1 hits at ranks 3,5 -> (1/3 + 2/5)/2 = 11/30; q2 -> 0; mean 11/60
    assert result["map"] == pytest.approx(0.18333333333333333, abs=EXACT)


def test_recall_cutoff_names_the_key(qrels: Qrels) -> None:
    result = evaluate(RUN, qrels, k_recall=2)
    # top-2: q1 [d3, d4] -> 1 of 3; q2 [d6, d7] -> 0 of 2; mean 1/6
    assert result["recall@2"] == pytest.approx(0.16666666666666666, abs=EXACT)
    assert "recall@100" not in result


def test_per_query_values(qrels: Qrels) -> None:
    per_query = evaluate_per_query(RUN, qrels)
    assert set(per_query) == {"q1", "q2"}
    assert per_query["q1"]["ndcg@10"] == pytest.approx(NDCG_Q1, abs=EXACT)
    assert per_query["q2"]["ndcg@10"] == pytest.approx(NDCG_Q2, abs=EXACT)
    assert per_query["q1"]["mrr@10"] == pytest.approx(0.5, abs=EXACT)


def test_judged_query_with_empty_ranking_counts_as_zero(qrels: Qrels) -> None:
    result = evaluate({**RUN, "q3": {}}, qrels)
    # q3 is now in the run with nothing retrieved: it scores 0 and the mean is over 3 queries
    # nDCG = (0.6099792242260635 + 0.19004688335796713 + 0) / 3 = 0.2666753691946769
    assert result["ndcg@10"] == pytest.approx(0.2666753691946769, abs=EXACT)
    assert result["mrr@10"] == pytest.approx((0.5 + 1 / 3) / 3, abs=EXACT)


def test_unjudged_run_queries_are_ignored(qrels: Qrels) -> None:
    with_extra = {**RUN, "q-unjudged": {"d1": 1.0}}
    assert evaluate(with_extra, qrels) == evaluate(RUN, qrels)


def test_query_without_relevant_docs_scores_zero() -> None:
    # trec_eval convention: a judged query with no relevant document scores 0 and still counts in the mean
    qrels = {"a": {"x": 1}, "b": {"x": 0, "y": 0}}
    run: Run = {"a": {"x": 1.0}, "b": {"x": 2.0, "y": 1.0}}
    assert evaluate(run, qrels) == {"ndcg@10": 0.5, "mrr@10": 0.5, "recall@100": 0.5, "map": 0.5}
    # at level 2 "a" has no relevant doc either: RR/R/AP are 0, nDCG still uses the grade-1 gain
    assert evaluate(run, qrels, relevance_level=2) == {
        "ndcg@10": 0.5,
        "mrr@10": 0.0,
        "recall@100": 0.0,
        "map": 0.0,
    }


def test_ties_follow_trec_eval_order_for_every_measure() -> None:
    # equal scores: trec_eval ranks doc id descending, so "b" (not relevant) comes before "a"
    qrels = {"q": {"a": 1, "b": 0}}
    result = evaluate({"q": {"a": 1.0, "b": 1.0}}, qrels)
    assert result["mrr@10"] == pytest.approx(0.5, abs=EXACT)
    assert result["map"] == pytest.approx(0.5, abs=EXACT)
    # nDCG = (1/log2(3)) / 1 = 0.6309297535714575
    assert result["ndcg@10"] == pytest.approx(0.6309297535714575, abs=EXACT)


def test_rejects_disjoint_run_and_bad_levels(qrels: Qrels) -> None:
    with pytest.raises(ValueError, match="no query of the run"):
        evaluate({"other": {"d1": 1.0}}, qrels)
    with pytest.raises(ValueError, match="relevance_level"):
        evaluate(RUN, qrels, relevance_level=0)
