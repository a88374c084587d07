"""Long documents: the same top-k lists re-ranked under one plan with documents cut at a token limit
(truncation) or split into windows (chunking, MaxP / FirstP / mean), metrics beside their cost.

Each reading is one way of feeding documents to the model; every reading scores the same queries and
candidates, so nDCG@10 differences are the readings' alone. Cost is FLOPs per query (engine rows,
windows included) and wall time; the candidates' token lengths say how many documents a truncation
actually cuts.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matryoshka.data.datasets import document_text, rank_documents, write_run
from matryoshka.engine.plan import Plan
from matryoshka.engine.reranker import Reranker
from matryoshka.eval.metrics import evaluate
from matryoshka.eval.rerank_run import EvalInput, rerank_run
from matryoshka.model.prompt import Truncation
from matryoshka.model.window import Chunking


@dataclass(frozen=True)
class Reading:
    """How documents reach the model: cut by `truncation`, or windowed by `chunking` when set."""

    name: str
    truncation: Truncation
    chunking: Chunking | None = None


def candidate_lengths(reranker: Reranker, data: EvalInput) -> list[int]:
    """Token length of every evaluated candidate document's text (no template, no query)."""
    texts = [
        document_text(data.collection.corpus[doc_id])
        for qid in data.query_ids
        for doc_id, _ in rank_documents(data.candidates[qid])[: data.top_k]
    ]
    ids = reranker.model.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    return [len(x) for x in ids]


def compare_readings(
    reranker: Reranker,
    data: EvalInput,
    plan: Plan,
    readings: Sequence[Reading],
    *,
    out_dir: Path | None = None,
    progress: bool = False,
) -> dict[str, dict[str, Any]]:
    """First stage and each reading on the same top-k lists: metrics, rows, FLOPs and seconds per
    query; a TREC run per reading in `out_dir`."""
    resolved = plan.resolve(reranker.info)
    report: dict[str, dict[str, Any]] = {
        "first_stage": dict(evaluate(data.candidates, data.qrels, relevance_level=data.relevance_level))
    }
    for reading in readings:
        result = rerank_run(
            reranker,
            data.collection,
            data.candidates,
            data.query_ids,
            resolved,
            top_k=data.top_k,
            progress=progress,
            desc=reading.name,
            truncation=reading.truncation,
            chunking=reading.chunking,
        )
        if out_dir is not None:
            file = reading.name.replace("/", "-")  # "chunk-128/32-max" -> chunk-128-32-max.trec
            write_run(result.run, out_dir / f"{file}.trec", tag=f"matryoshka-{file}")
        u = result.usage
        queries = max(u.queries, 1)
        report[reading.name] = {
            **evaluate(result.run, data.qrels, relevance_level=data.relevance_level),
            "rows_per_query": u.rows / queries,
            "gflops_per_query": u.flops / queries / 1e9,
            "seconds_per_query": u.seconds / queries,
            "pairs": u.pairs,
        }
    return report


def format_readings(report: Mapping[str, Mapping[str, Any]], lengths: Sequence[int], cut: int) -> str:
    """A fixed-width table of `compare_readings`, under a line on the candidates' lengths."""
    over = sum(n > cut for n in lengths)
    head = (
        f"candidates: {len(lengths)}, median {statistics.median(lengths) if lengths else 0:.0f} tokens, "
        f"{over} ({over / max(len(lengths), 1):.0%}) longer than {cut}"
    )
    lines = [head, f"{'reading':<24} {'nDCG@10':>8} {'MRR@10':>8} {'rows/q':>7} {'GFLOPs/q':>9} {'s/q':>6}"]
    for name, row in report.items():
        cost = (
            f"{row['rows_per_query']:>7.1f} {row['gflops_per_query']:>9.1f} {row['seconds_per_query']:>6.2f}"
            if "rows_per_query" in row
            else f"{'-':>7} {'-':>9} {'-':>6}"
        )
        lines.append(f"{name:<24} {row['ndcg@10']:>8.4f} {row['mrr@10']:>8.4f} {cost}")
    return "\n".join(lines)
