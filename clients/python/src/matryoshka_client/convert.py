"""Between the client's Python types and the generated messages: requests out, results back.

Public so that code using the raw stubs (tests, servers, other transports) can reuse it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from numbers import Real
from typing import Any, TypeVar

from google.protobuf.duration_pb2 import Duration

from matryoshka_client._types import (
    Budget,
    CacheMode,
    CascadeExit,
    Chunking,
    ConfidenceExit,
    Document,
    DocumentInput,
    ModelInfo,
    ModelLimits,
    RerankResult,
    RerankStage,
    ScoredDocument,
    ScoreType,
    Timing,
    Truncation,
    Usage,
    WidthStep,
    Window,
)
from matryoshka_client.proto import rerank_service_pb2 as pb

_SCORE_TYPES: dict[str, pb.ScoreType.ValueType] = {
    "probability": pb.SCORE_TYPE_PROBABILITY,
    "logit": pb.SCORE_TYPE_LOGIT,
}
_CACHE_MODES: dict[str, pb.CacheMode.ValueType] = {
    "read_write": pb.CACHE_MODE_READ_WRITE,
    "read_only": pb.CACHE_MODE_READ_ONLY,
    "bypass": pb.CACHE_MODE_BYPASS,
}
_SIDES: dict[str, pb.TruncationSide.ValueType] = {
    "end": pb.TRUNCATION_SIDE_END,
    "start": pb.TRUNCATION_SIDE_START,
}
_AGGREGATES: dict[str, pb.Aggregate.ValueType] = {
    "max": pb.AGGREGATE_MAX,
    "first": pb.AGGREGATE_FIRST,
    "mean": pb.AGGREGATE_MEAN,
}


_V = TypeVar("_V")


def _choice(value: str, choices: Mapping[str, _V], name: str) -> _V:
    if value not in choices:
        raise ValueError(f"{name} must be one of {sorted(choices)}, got {value!r}")
    return choices[value]


def _duration(seconds: float, name: str) -> Duration:
    if not math.isfinite(seconds):
        raise ValueError(f"{name} must be a finite number of seconds, got {seconds}")
    d = Duration()
    d.FromNanoseconds(round(seconds * 1e9))
    return d


def to_document(doc: DocumentInput, index: int = 0) -> pb.Document:
    """One document from its text, an (id, text) pair, a {"id", "text", "first_stage_score"} mapping or a
    Document."""
    where = f"documents[{index}]"
    raw_id: object = ""
    score: object = None
    if isinstance(doc, str):
        text: object = doc
    elif isinstance(doc, Document):
        raw_id, text, score = doc.id, doc.text, doc.first_stage_score
    elif isinstance(doc, Mapping):
        if "text" not in doc:
            raise TypeError(f"{where}: a mapping needs a 'text' key, got keys {sorted(doc)}")
        raw_id, text, score = doc.get("id", ""), doc["text"], doc.get("first_stage_score")
    elif isinstance(doc, tuple) and len(doc) == 2:
        raw_id, text = doc
    else:
        raise TypeError(f"{where}: expected str, (id, text), a mapping or Document, got {type(doc).__name__}")
    if not isinstance(text, str):
        raise TypeError(f"{where}: text must be a str, got {type(text).__name__}")
    if score is not None and (isinstance(score, bool) or not isinstance(score, Real)):
        raise TypeError(f"{where}.first_stage_score must be a number, got {type(score).__name__}")
    return pb.Document(
        id="" if raw_id is None else str(raw_id),
        text=text,
        first_stage_score=float(score) if score is not None else None,
    )


def to_documents(documents: Sequence[DocumentInput]) -> list[pb.Document]:
    """The request's documents; first-stage scores must come with every document or with none."""
    if isinstance(documents, str | bytes):
        raise TypeError("documents must be a sequence of documents, not a single string")
    converted = [to_document(d, i) for i, d in enumerate(documents)]
    scored = [d.HasField("first_stage_score") for d in converted]
    if any(scored) and not all(scored):
        have, lack = scored.index(True), scored.index(False)
        raise ValueError(
            f"documents[{lack}].first_stage_score is missing but documents[{have}] has one: "
            "give a first-stage score for every document or for none"
        )
    return converted


def to_width_step(step: WidthStep) -> pb.WidthStep:
    """One step of the width schedule."""
    if step.ratio is not None:
        return pb.WidthStep(layer=step.layer, ratio=step.ratio)
    assert step.length is not None  # WidthStep checks that exactly one is set
    return pb.WidthStep(layer=step.layer, length=step.length)


def to_confidence(c: ConfidenceExit) -> pb.ConfidenceExit:
    """Confidence exit; unset thresholds stay unset (both unset = the server's defaults)."""
    return pb.ConfidenceExit(relevant=c.relevant, irrelevant=c.irrelevant, min_layer=c.min_layer)


def to_cascade(c: CascadeExit) -> pb.CascadeExit:
    """Top-n cascade; a margin of None stays unset (the server's default)."""
    return pb.CascadeExit(top_n=c.top_n, margin=c.margin, patience=c.patience, min_layer=c.min_layer)


def to_budget(b: Budget) -> pb.Budget:
    """Time and/or FLOP budget."""
    seconds = b.max_latency_seconds
    latency = _duration(seconds, "budget.max_latency") if seconds is not None else None
    return pb.Budget(max_latency=latency, max_flops=b.max_flops)


def to_truncation(t: Truncation) -> pb.Truncation:
    """Token limits."""
    side = (
        _choice(t.side, _SIDES, "truncation.side") if t.side is not None else pb.TRUNCATION_SIDE_UNSPECIFIED
    )
    return pb.Truncation(
        max_query_tokens=t.max_query_tokens, max_document_tokens=t.max_document_tokens, side=side
    )


def to_chunking(c: Chunking) -> pb.Chunking:
    """Window size, overlap and aggregation of chunked documents."""
    aggregate = (
        _choice(c.aggregate, _AGGREGATES, "chunking.aggregate")
        if c.aggregate is not None
        else pb.AGGREGATE_UNSPECIFIED
    )
    return pb.Chunking(window_tokens=c.window_tokens, overlap_tokens=c.overlap_tokens, aggregate=aggregate)


def build_request(
    query: str,
    documents: Sequence[DocumentInput],
    *,
    model: str = "",
    top_n: int | None = None,
    return_documents: bool = False,
    depth: int | None = None,
    width: Sequence[WidthStep] = (),
    confidence: ConfidenceExit | None = None,
    cascade: CascadeExit | None = None,
    first_stage_top_n: int | None = None,
    budget: Budget | None = None,
    score_type: ScoreType | None = None,
    truncation: Truncation | None = None,
    cache_mode: CacheMode | None = None,
    request_id: str = "",
    chunking: Chunking | None = None,
    min_score: float | None = None,
) -> pb.RerankRequest:
    """The RerankRequest for a query and its documents; options left out keep the server's defaults.

    Only what cannot be sent is checked here (types, names of choices) and that first-stage scores
    come with every document or none; the server judges the values and reports every broken rule at
    once (RerankError.field_violations).
    """
    if not isinstance(query, str):
        raise TypeError(f"query must be a str, got {type(query).__name__}")
    early_exit = None
    if confidence is not None or cascade is not None or first_stage_top_n is not None:
        early_exit = pb.EarlyExit(
            confidence=to_confidence(confidence) if confidence is not None else None,
            cascade=to_cascade(cascade) if cascade is not None else None,
            first_stage=(
                pb.FirstStageExit(top_n=first_stage_top_n) if first_stage_top_n is not None else None
            ),
        )
    return pb.RerankRequest(
        model=model,
        query=query,
        documents=to_documents(documents),
        top_n=top_n or 0,
        return_documents=return_documents,
        depth=depth or 0,
        width=[to_width_step(s) for s in width],
        early_exit=early_exit,
        budget=to_budget(budget) if budget is not None else None,
        score_type=(
            _choice(score_type, _SCORE_TYPES, "score_type")
            if score_type is not None
            else pb.SCORE_TYPE_UNSPECIFIED
        ),
        truncation=to_truncation(truncation) if truncation is not None else None,
        cache_mode=(
            _choice(cache_mode, _CACHE_MODES, "cache_mode")
            if cache_mode is not None
            else pb.CACHE_MODE_UNSPECIFIED
        ),
        request_id=request_id,
        chunking=to_chunking(chunking) if chunking is not None else None,
        min_score=min_score,
    )


def _enum_name(enum: Any, prefix: str, value: int) -> str:
    """Name of an enum value without its prefix, lowercased ("depth" for EXIT_REASON_DEPTH); "" for the
    zero value; "unknown_<n>" for a value newer than these stubs."""
    if value == 0:
        return ""
    try:
        name: str = enum.Name(value)
    except ValueError:
        return f"unknown_{value}"
    return name.removeprefix(prefix).lower()


def exit_reason_name(value: int) -> str:
    """The client's name of an ExitReason value (the engine's names: "depth", "cascade", ...)."""
    return _enum_name(pb.ExitReason, "EXIT_REASON_", value)


def seconds(d: Duration) -> float:
    """A Duration in seconds."""
    return d.seconds + d.nanos / 1e9


def to_scored(r: pb.RerankResult) -> ScoredDocument:
    """One result."""
    return ScoredDocument(
        index=r.index,
        id=r.id,
        score=r.score,
        exit_layer=r.exit_layer,
        exit_reason=exit_reason_name(r.exit_reason),
        document=r.document if r.HasField("document") else None,
        window=to_window(r.window) if r.HasField("window") else None,
    )


def to_window(w: pb.Window) -> Window:
    """The window that decided a chunked document's score."""
    return Window(index=w.index, count=w.count, start=w.start, end=w.end)


def to_usage(u: pb.Usage) -> Usage:
    """Work done."""
    return Usage(
        layer_tokens=u.layer_tokens,
        flops=u.flops,
        full_flops=u.full_flops,
        flops_saved=u.flops_saved,
        cached_flops=u.cached_flops,
        cache_hits=u.cache_hits,
        cache_resumed=u.cache_resumed,
        rows=u.rows,
    )


def to_timing(t: pb.Timing) -> Timing:
    """Server-side time in seconds."""
    return Timing(
        queue_seconds=seconds(t.queue), compute_seconds=seconds(t.compute), total_seconds=seconds(t.total)
    )


def to_result(response: pb.RerankResponse) -> RerankResult:
    """A Rerank response."""
    return RerankResult(
        results=[to_scored(r) for r in response.results],
        usage=to_usage(response.usage),
        timing=to_timing(response.timing),
        partial=response.partial,
        model=response.model,
        request_id=response.request_id,
    )


def to_stage(response: pb.StreamRerankResponse) -> RerankStage:
    """One StreamRerank message."""
    return RerankStage(
        layer=response.layer,
        results=[to_scored(r) for r in response.results],
        final=response.final,
        usage=to_usage(response.usage) if response.HasField("usage") else None,
        timing=to_timing(response.timing) if response.HasField("timing") else None,
        partial=response.partial,
        model=response.model,
        request_id=response.request_id,
    )


def from_truncation(t: pb.Truncation) -> Truncation:
    """Token limits as the client's type."""
    side = _enum_name(pb.TruncationSide, "TRUNCATION_SIDE_", t.side)
    return Truncation(
        max_query_tokens=t.max_query_tokens,
        max_document_tokens=t.max_document_tokens,
        side="start" if side == "start" else "end" if side == "end" else None,
    )


def to_model_info(m: pb.ModelInfo) -> ModelInfo:
    """One model's description."""
    return ModelInfo(
        name=m.name,
        family=_enum_name(pb.ModelFamily, "MODEL_FAMILY_", m.family),
        num_layers=m.num_layers,
        hidden_size=m.hidden_size,
        head_layers=tuple(m.head_layers),
        scoring=_enum_name(pb.ScoringMode, "SCORING_MODE_", m.scoring),
        merge_ratios=tuple(m.merge_ratios),
        limits=ModelLimits(
            max_documents=m.limits.max_documents,
            max_request_bytes=m.limits.max_request_bytes,
            max_query_tokens=m.limits.max_query_tokens,
            max_document_tokens=m.limits.max_document_tokens,
            max_windows_per_document=m.limits.max_windows_per_document,
            max_windows_per_request=m.limits.max_windows_per_request,
        ),
        default_truncation=from_truncation(m.default_truncation),
        calibration_version=m.calibration_version,
        fingerprint=m.fingerprint,
        template_version=m.template_version,
        is_default=m.is_default,
        dtype=m.dtype,
        budget_plan=m.budget_plan,
    )
