"""Record once, replay offline: one full-depth run under a width schedule that scores every pair at every
head layer (a confidence exit that never fires keeps every row running and scored), saved with the
first-stage score and each row's FLOPs, so depth, exit, cascade and fusion plans are replayed without
running the model again (eval/replay.py)."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm  # type: ignore[import-untyped]

from matryoshka.data.datasets import document_text, rank_documents
from matryoshka.engine.cost import FlopCounter
from matryoshka.engine.job import EngineError, Job, JobResult
from matryoshka.engine.plan import ConfidenceExit, Plan
from matryoshka.engine.reranker import Reranker
from matryoshka.eval.rerank_run import EvalInput
from matryoshka.model.heads import Calibration
from matryoshka.model.state import Segment
from matryoshka.model.width import WidthTarget


@dataclass
class PairScores:
    """One (query, document) pair: first-stage score, raw logit and calibrated probability per head layer,
    FLOPs through each head layer (layers and merges only), one head scoring's FLOPs and the full plan's."""

    qid: str
    doc: str
    first_stage: float
    logit: dict[int, float]
    prob: dict[int, float]
    layer_flops: dict[int, float]
    score_flops: float
    full_flops: float


def recording_plan(head_layers: tuple[int, ...], width: Mapping[int, WidthTarget]) -> Plan:
    """Full depth under `width`, scored at every head layer: a confidence exit no probability can meet."""
    never = ConfidenceExit(relevant=None, irrelevant=-1.0, min_layer=min(head_layers))
    return Plan(width=dict(width), confidence=never)


@dataclass(frozen=True)
class QueryCandidates:
    """One query and its candidates as (document id, text, first-stage score), first-stage order."""

    qid: str
    query: str
    candidates: list[tuple[str, str, float]]


def candidates_of(data: EvalInput) -> list[QueryCandidates]:
    """The evaluated queries of `data` with their top-k candidates (queries without any are left out)."""
    out = []
    for qid in data.query_ids:
        ranked = rank_documents(data.candidates[qid])[: data.top_k]
        docs = [(d, document_text(data.collection.corpus[d]), float(s)) for d, s in ranked]
        if docs:
            out.append(QueryCandidates(qid, data.collection.queries[qid], docs))
    return out


def record(
    reranker: Reranker,
    queries: Sequence[QueryCandidates],
    width: Mapping[int, WidthTarget] | None = None,
    *,
    queries_per_batch: int = 4,
    progress: bool = False,
) -> list[PairScores]:
    """Score every candidate at every head layer under `width`, `queries_per_batch` queries per call."""
    info = reranker.info
    never = recording_plan(info.head_layers, width or {})
    # irrelevant=-1 lies outside [0, 1], so resolve() would refuse it: the plan is built resolved
    plan = Plan(depth=info.num_layers, width=dict(sorted(never.width.items())), confidence=never.confidence)
    flops = reranker.executor.flops
    calibration = reranker.model.scorer.calibration
    out: list[PairScores] = []
    batches = [queries[i : i + queries_per_batch] for i in range(0, len(queries), queries_per_batch)]
    for batch in tqdm(batches, desc="record", unit="batch", disable=not progress):
        jobs = []
        for item in batch:
            docs = [text for _, text, _ in item.candidates]
            job = Job(item.query, docs, plan, keep_states=True)
            job.pairs = reranker.model.encode(job.query, docs, job.truncation)
            jobs.append(job)
        answers = reranker.executor.run(jobs)
        for item, job, answer in zip(batch, jobs, answers, strict=True):
            if isinstance(answer, EngineError):
                raise answer
            out += _rows(item, job, answer, flops, calibration)
    return out


def _rows(
    item: QueryCandidates,
    job: Job,
    answer: JobResult,
    flops: FlopCounter,
    calibration: Calibration,
) -> list[PairScores]:
    assert job.pairs is not None
    query_tokens = sum(s == Segment.QUERY for s in job.pairs[0].segments)
    score_each = flops.score(1, query_tokens)
    rows = []
    for i, (doc_id, _, fs) in enumerate(item.candidates):
        history = answer.scores[i]
        layers = sorted(history)
        logit = {layer: history[layer].logit for layer in layers}
        prob = {
            layer: float(calibration.probability(layer, torch.tensor([logit[layer]]))[0]) for layer in layers
        }
        layer_flops = {layer: history[layer].flops - (k + 1) * score_each for k, layer in enumerate(layers)}
        full = flops.full(torch.tensor([len(job.pairs[i].input_ids)]), query_tokens)
        rows.append(PairScores(item.qid, doc_id, float(fs), logit, prob, layer_flops, score_each, full))
    return rows


def save(rows: list[PairScores], path: Path, meta: Mapping[str, object]) -> None:
    """Write the recorded rows and what produced them as JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"meta": dict(meta), "rows": [asdict(r) for r in rows], "written": time.time()}
    path.write_text(json.dumps(payload), encoding="utf-8")
