"""Ranking metrics through ir_measures only (pytrec_eval computes nDCG, recall and AP; RR@k comes from
ir_measures' MS MARCO provider, because pytrec_eval has no RR cut-off).

Conventions, all inherited from ir_measures / trec_eval:
- nDCG@10 uses graded gains: gain = grade (linear, not 2**grade - 1), discount log2(rank + 1), and the
  ideal DCG is built from every judged document of the query, retrieved or not.
- RR@10, Recall@k and AP count a document as relevant when its grade >= `relevance_level`
  (TREC DL uses 2); unjudged documents are not relevant.
- A query in the qrels with no relevant document scores 0 on every measure and still counts in the mean.
"""

from __future__ import annotations

from collections.abc import Mapping

import ir_measures

from matryoshka.data.datasets import rank_documents


def measures(*, relevance_level: int = 1, k_recall: int = 100) -> dict[str, ir_measures.Measure]:
    """The reported measures keyed by their names ("ndcg@10", "mrr@10", f"recall@{k_recall}", "map")."""
    if relevance_level < 1:
        raise ValueError(f"relevance_level must be >= 1, got {relevance_level}")
    if k_recall < 1:
        raise ValueError(f"k_recall must be >= 1, got {k_recall}")
    rel = relevance_level
    return {
        "ndcg@10": ir_measures.parse_measure("nDCG@10"),
        "mrr@10": ir_measures.parse_measure(f"RR(rel={rel})@10"),
        f"recall@{k_recall}": ir_measures.parse_measure(f"R(rel={rel})@{k_recall}"),
        "map": ir_measures.parse_measure(f"AP(rel={rel})"),
    }


def evaluate(
    run: Mapping[str, Mapping[str, float]],
    qrels: Mapping[str, Mapping[str, int]],
    *,
    relevance_level: int = 1,
    k_recall: int = 100,
) -> dict[str, float]:
    """Mean nDCG@10, MRR@10, Recall@k_recall and MAP over the judged queries that appear in `run`.

    Averaging choice: queries of `qrels` absent from `run` are left out (a query present with an empty
    ranking scores 0); run queries without qrels are ignored. Raises ValueError if no query is shared.
    """
    named = measures(relevance_level=relevance_level, k_recall=k_recall)
    aggregated = _calc(run, qrels, named).aggregated
    if not isinstance(aggregated, dict):  # ir_measures returns a bare number only for a single measure
        raise TypeError(f"unexpected aggregate from ir_measures: {aggregated!r}")
    return {name: float(aggregated[measure]) for name, measure in named.items()}


def evaluate_per_query(
    run: Mapping[str, Mapping[str, float]],
    qrels: Mapping[str, Mapping[str, int]],
    *,
    relevance_level: int = 1,
    k_recall: int = 100,
) -> dict[str, dict[str, float]]:
    """Per-query values {query_id: {measure name: value}} for the queries `evaluate` averages over."""
    named = measures(relevance_level=relevance_level, k_recall=k_recall)
    by_measure = {measure: name for name, measure in named.items()}
    results: dict[str, dict[str, float]] = {}
    for metric in _calc(run, qrels, named).per_query:
        results.setdefault(metric.query_id, {})[by_measure[metric.measure]] = float(metric.value)
    return results


def _calc(
    run: Mapping[str, Mapping[str, float]],
    qrels: Mapping[str, Mapping[str, int]],
    named: Mapping[str, ir_measures.Measure],
) -> ir_measures.CalcResults:
    """ir_measures over the judged queries present in `run` (ir_measures would score the others 0)."""
    shared = [qid for qid in qrels if qid in run]
    if not shared:
        raise ValueError("no query of the run has judgments in the qrels")
    judged = {qid: dict(qrels[qid]) for qid in shared}
    return ir_measures.calc(list(named.values()), judged, _strict_order(run, shared))


def _strict_order(
    run: Mapping[str, Mapping[str, float]], query_ids: list[str]
) -> dict[str, dict[str, float]]:
    """Replace scores by strictly decreasing ones in trec_eval order, so every provider sees one ranking.

    pytrec_eval breaks score ties by doc id descending but the MS MARCO provider by doc id ascending;
    fixing the order here keeps RR consistent with nDCG/AP. Empty rankings are dropped (they score 0).
    """
    ordered: dict[str, dict[str, float]] = {}
    for qid in query_ids:
        ranking = rank_documents(run[qid])
        if ranking:
            ordered[qid] = {doc_id: float(len(ranking) - i) for i, (doc_id, _) in enumerate(ranking)}
    return ordered
