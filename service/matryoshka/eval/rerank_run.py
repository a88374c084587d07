"""Re-rank a first-stage run under one Plan: the top-k candidates of every evaluated query, scored by
the engine, returned as a TREC run with what it cost.

Which queries: those judged in the split that the first stage has an entry for, in queries.jsonl
order, cut to `max_queries`. A run file's entries are the queries it names; BM25 answers every
judged query, and one that matches no document keeps its empty ranking (it scores 0 for every
system). Exactly the top-k candidates (trec_eval order) are re-ranked and evaluated; nothing below
them is appended, so the first stage is evaluated on the same top-k lists. A re-ranked document's
score is its calibrated probability at its exit layer, the quantity the engine ranks by.
"""

from __future__ import annotations

import math
import os
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm  # type: ignore[import-untyped]

from matryoshka.data.datasets import (
    Collection,
    DataError,
    Qrels,
    Run,
    document_text,
    load_collection,
    rank_documents,
    truncate_run,
)
from matryoshka.data.first_stage import first_stage
from matryoshka.engine.job import EngineError, Job, JobResult
from matryoshka.engine.plan import Plan
from matryoshka.engine.reranker import Reranker
from matryoshka.model.prompt import Truncation
from matryoshka.model.window import Chunking

# Batching queries pays only when a call holds several of the executor's buckets: rows are sorted by
# length before they are cut into buckets of at most max_batch_rows, so many rows make buckets of
# near-equal lengths (little padding), while a few queries in ONE bucket pad every row to the longest
# of all. Measured on DL19 (SmolLM2-135M fp32, 2 cores), pairs/s by queries per call:
#   top-100, light:  1 -> 7.9-8.7, 2 -> 9.8, 4 -> 11.1-11.2
#   top-10, light:   1 -> 8.0-8.7, 12 -> 7.8-8.2, 24 -> 9.4
#   top-10, full:    1 -> 3.4-3.8 (also Reranker.rerank per query), 3 -> 2.6-2.7, 6 -> 2.2
ROWS_PER_CALL_BUCKETS = 6  # aim for about this many full buckets per executor call
MIN_BUCKETS_TO_BATCH = 3  # below this many, one query per call pads least


@dataclass
class EvalInput:
    """What every system is evaluated on: the judged queries, their top-k candidates and the qrels."""

    collection: Collection
    split: str
    qrels: Qrels
    candidates: Run  # first-stage top-k of exactly `query_ids`, in that order
    query_ids: list[str]
    top_k: int
    relevance_level: int
    first_stage: str  # "bm25" or the run file given


def default_relevance_level(qrels: Qrels) -> int:
    """2 when the grades go up to 3 or more (TREC DL: grade >= 2 is relevant for MRR/MAP/recall), else 1."""
    top = max((grade for judged in qrels.values() for grade in judged.values()), default=1)
    return 2 if top >= 3 else 1


def select_queries(
    collection: Collection, qrels: Qrels, run: Mapping[str, object], max_queries: int | None = None
) -> list[str]:
    """Query ids judged in `qrels` and present in `run`, in queries.jsonl order, the first `max_queries`."""
    if max_queries is not None and max_queries < 1:
        raise ValueError(f"max_queries must be >= 1, got {max_queries}")
    chosen = [qid for qid in collection.queries if qid in qrels and qid in run]
    return chosen[:max_queries] if max_queries is not None else chosen


def prepare(
    data: str | os.PathLike[str],
    *,
    split: str = "test",
    first_stage_spec: str = "bm25",
    top_k: int = 100,
    max_queries: int | None = None,
    relevance_level: int | None = None,
    cache_dir: Path | None = None,
) -> EvalInput:
    """Load the collection and qrels, get the first stage's top-k and pick the evaluated queries."""
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    collection = load_collection(data)
    qrels = collection.qrels(split, unknown_docs="keep")
    run = first_stage(collection, first_stage_spec, split, top_k, cache_dir=cache_dir, missing="omit")
    query_ids = select_queries(collection, qrels, run, max_queries)
    if not query_ids:
        raise DataError(
            f"{collection.root}: no query of split {split!r} is in the first stage {first_stage_spec!r}"
        )
    candidates = truncate_run({qid: run[qid] for qid in query_ids}, top_k)
    level = relevance_level if relevance_level is not None else default_relevance_level(qrels)
    return EvalInput(
        collection=collection,
        split=split,
        qrels=qrels,
        candidates=candidates,
        query_ids=query_ids,
        top_k=top_k,
        relevance_level=level,
        first_stage=first_stage_spec,
    )


@dataclass
class RerankUsage:
    """Totals over a re-ranked run. `seconds` is wall time inside the executor (tokenising included)."""

    queries: int = 0
    pairs: int = 0
    rows: int = 0  # rows the engine scored: the pairs, or their windows when chunked
    flops: float = 0.0
    full_flops: float = 0.0
    seconds: float = 0.0
    exit_layer_sum: int = 0
    exit_reasons: Counter[str] = field(default_factory=Counter)

    @property
    def flops_saved(self) -> float:
        """Fraction of the full-depth, full-width FLOPs of the same pairs not spent."""
        return 1.0 - self.flops / self.full_flops if self.full_flops > 0 else 0.0

    @property
    def pairs_per_second(self) -> float:
        """Re-ranked (query, document) pairs per second of executor wall time."""
        return self.pairs / self.seconds if self.seconds > 0 else 0.0

    @property
    def mean_exit_layer(self) -> float:
        """Mean layer at which documents were scored for the last time."""
        return self.exit_layer_sum / self.pairs if self.pairs else 0.0

    def add(self, result: JobResult) -> None:
        """Fold in one query's executor result (not its time: batches are timed as a whole)."""
        self.queries += 1
        self.pairs += len(result.outcomes)
        self.rows += result.usage.rows
        self.flops += result.usage.flops
        self.full_flops += result.usage.full_flops
        for outcome in result.outcomes:
            self.exit_layer_sum += outcome.exit_layer
            self.exit_reasons[str(outcome.exit_reason)] += 1


@dataclass
class RerankedRun:
    """A re-ranked run {qid: {doc_id: probability}} and its cost."""

    run: Run
    usage: RerankUsage


def rerank_run(
    reranker: Reranker,
    collection: Collection,
    candidates: Mapping[str, Mapping[str, float]],
    query_ids: Sequence[str],
    plan: Plan,
    *,
    top_k: int,
    queries_per_batch: int | None = None,
    progress: bool = False,
    desc: str = "re-rank",
    truncation: Truncation | None = None,
    chunking: Chunking | None = None,
) -> RerankedRun:
    """Re-rank the top-`top_k` candidates of each query in `query_ids` under `plan` (documents cut by
    `truncation`, default 192 tokens, or split into windows by `chunking`).

    Queries go to the executor `queries_per_batch` at a time (their rows share length buckets; None
    picks `auto_queries_per_batch`). A query without candidates gets an empty ranking and costs
    nothing. Raises PlanError for a plan the model cannot run and the executor's EngineError if a
    query fails.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if queries_per_batch is None:
        queries_per_batch = auto_queries_per_batch(top_k, len(query_ids), reranker.executor.max_batch_rows)
    if queries_per_batch < 1:
        raise ValueError(f"queries_per_batch must be >= 1, got {queries_per_batch}")
    resolved = plan.resolve(reranker.info)
    run: Run = {qid: {} for qid in query_ids}
    usage = RerankUsage()
    with tqdm(total=len(query_ids), desc=desc, unit="q", disable=not progress, leave=False) as bar:
        pending: list[tuple[str, list[str]]] = []
        for position, qid in enumerate(query_ids):
            doc_ids = [doc_id for doc_id, _ in rank_documents(candidates[qid])[:top_k]]
            if doc_ids:
                pending.append((qid, doc_ids))
            else:
                usage.queries += 1
                bar.update(1)
            if pending and (len(pending) == queries_per_batch or position == len(query_ids) - 1):
                reading = (truncation or Truncation(), chunking)
                _run_batch(reranker, collection, resolved, pending, run, usage, reading)
                bar.update(len(pending))
                bar.set_postfix(pairs_per_s=f"{usage.pairs_per_second:.2f}", refresh=False)
                pending = []
    return RerankedRun(run=run, usage=usage)


def run_plan(
    reranker: Reranker,
    data: EvalInput,
    plan: Plan,
    *,
    queries_per_batch: int | None = None,
    progress: bool = False,
    desc: str = "re-rank",
) -> tuple[Plan, RerankedRun]:
    """`plan` resolved for the model, and `rerank_run` of it over `data`'s candidates and queries."""
    resolved = plan.resolve(reranker.info)
    result = rerank_run(
        reranker,
        data.collection,
        data.candidates,
        data.query_ids,
        resolved,
        top_k=data.top_k,
        queries_per_batch=queries_per_batch,
        progress=progress,
        desc=desc,
    )
    return resolved, result


def auto_queries_per_batch(top_k: int, queries: int, max_batch_rows: int) -> int:
    """Queries per executor call: enough for ~ROWS_PER_CALL_BUCKETS full buckets of rows, or 1 when the
    queries at hand cannot fill MIN_BUCKETS_TO_BATCH buckets (see the measurements above)."""
    wanted = max(1, math.ceil(ROWS_PER_CALL_BUCKETS * max_batch_rows / top_k))
    if min(wanted, queries) * top_k < MIN_BUCKETS_TO_BATCH * max_batch_rows:
        return 1
    return wanted


def _run_batch(
    reranker: Reranker,
    collection: Collection,
    plan: Plan,
    batch: list[tuple[str, list[str]]],
    run: Run,
    usage: RerankUsage,
    reading: tuple[Truncation, Chunking | None],
) -> None:
    """Score one batch of queries with the executor and record their rankings and usage."""
    truncation, chunking = reading
    jobs = [
        Job(
            collection.queries[qid],
            [document_text(collection.corpus[d]) for d in doc_ids],
            plan,
            truncation,
            chunking=chunking,
        )
        for qid, doc_ids in batch
    ]
    started = time.perf_counter()
    answers = reranker.executor.run(jobs)
    usage.seconds += time.perf_counter() - started
    for (qid, doc_ids), answer in zip(batch, answers, strict=True):
        if isinstance(answer, EngineError):
            raise answer
        run[qid] = {doc_ids[o.index]: o.probability for o in answer.outcomes}
        usage.add(answer)
