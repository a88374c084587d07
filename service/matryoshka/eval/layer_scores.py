"""Record once, replay offline: one full-depth run under a width schedule that scores every pair at every
head layer (a confidence exit that never fires keeps every row running and scored), saved with the
first-stage score and each row's FLOPs, so depth, exit, cascade and fusion plans are replayed without
running the model again (eval/replay.py)."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
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


def record(
    reranker: Reranker,
    data: EvalInput,
    width: Mapping[int, WidthTarget] | None = None,
    *,
    queries_per_batch: int = 4,
    progress: bool = False,
) -> list[PairScores]:
    """Score every candidate of `data` at every head layer, one query per executor call."""
    info = reranker.info
    plan = recording_plan(info.head_layers, width or {})
    # irrelevant=-1 is outside [0, 1]; resolve() would refuse it, so build the resolved plan directly.
    plan = Plan(depth=info.num_layers, width=dict(sorted(plan.width.items())), confidence=plan.confidence)
    flops = reranker.executor.flops
    calibration = reranker.model.scorer.calibration
    out: list[PairScores] = []
    batches = [
        data.query_ids[i : i + queries_per_batch] for i in range(0, len(data.query_ids), queries_per_batch)
    ]
    for batch in tqdm(batches, desc="record", unit="batch", disable=not progress):
        ranked = [rank_documents(data.candidates[qid])[: data.top_k] for qid in batch]
        jobs = []
        for qid, cands in zip(batch, ranked, strict=True):
            docs = [document_text(data.collection.corpus[d]) for d, _ in cands]
            job = Job(data.collection.queries[qid], docs, plan, keep_states=True)
            job.pairs = reranker.model.encode(job.query, docs, job.truncation)
            jobs.append(job)
        answers = reranker.executor.run([j for j in jobs if j.documents])
        live = [(qid, cands, job) for qid, cands, job in zip(batch, ranked, jobs, strict=True) if cands]
        for (qid, cands, job), answer in zip(live, answers, strict=True):
            if isinstance(answer, EngineError):
                raise answer
            out += _rows(qid, cands, job, answer, flops, calibration)
    return out


def _rows(
    qid: str,
    cands: list[tuple[str, float]],
    job: Job,
    answer: JobResult,
    flops: FlopCounter,
    calibration: Calibration,
) -> list[PairScores]:
    assert job.pairs is not None
    query_tokens = sum(s == Segment.QUERY for s in job.pairs[0].segments)
    score_each = flops.score(1, query_tokens)
    rows = []
    for i, (doc_id, fs) in enumerate(cands):
        history = answer.scores[i]
        layers = sorted(history)
        logit = {layer: history[layer].logit for layer in layers}
        prob = {
            layer: float(calibration.probability(layer, torch.tensor([logit[layer]]))[0]) for layer in layers
        }
        layer_flops = {layer: history[layer].flops - (k + 1) * score_each for k, layer in enumerate(layers)}
        full = flops.full(torch.tensor([len(job.pairs[i].input_ids)]), query_tokens)
        rows.append(PairScores(qid, doc_id, float(fs), logit, prob, layer_flops, score_each, full))
    return rows


def save(rows: list[PairScores], path: Path, meta: Mapping[str, object]) -> None:
    """Write the recorded rows and what produced them as JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"meta": dict(meta), "rows": [asdict(r) for r in rows], "written": time.time()}
    path.write_text(json.dumps(payload), encoding="utf-8")
