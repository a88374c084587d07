"""Wire -> engine: a RerankRequest is validated into a call the engine runs (server/answer.py maps the
engine's answers back; the servicer only orchestrates).

Every request violation names the request's own proto field path (e.g. `early_exit.confidence.relevant`,
`width[1].ratio`, `documents[3].text`), all of them at once.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

from matryoshka.engine.named_plans import named_plan
from matryoshka.engine.plan import (
    Budget,
    CascadeExit,
    ConfidenceExit,
    FieldViolation,
    FirstStageExit,
    Plan,
    PlanError,
)
from matryoshka.engine.reranker import ScoreType
from matryoshka.model.matryoshka_model import ModelInfo
from matryoshka.model.prompt import Truncation
from matryoshka.model.width import WidthTarget
from matryoshka.model.window import Aggregate, Chunking, Window
from matryoshka.server.settings import Settings
from matryoshka_client.proto import rerank_service_pb2 as pb


class InvalidRequest(ValueError):  # noqa: N818 - the gRPC status it maps to is INVALID_ARGUMENT
    """A request that breaks the contract; `violations` name proto field paths."""

    def __init__(self, violations: list[FieldViolation]) -> None:
        self.violations = violations
        super().__init__("; ".join(f"{v.field}: {v.description}" for v in violations))


class UnknownModelError(LookupError):
    """The request names a model this server does not serve (NOT_FOUND, for every RPC)."""

    def __init__(self, name: str, served: list[str]) -> None:
        super().__init__(f"unknown model {name!r}; served: {served}")


def check_model(name: str, models: dict[str, ModelInfo]) -> ModelInfo:
    """The served model `name`; raises UnknownModelError."""
    info = models.get(name)
    if info is None:
        raise UnknownModelError(name, sorted(models))
    return info


CacheMode = Literal["read_write", "read_only", "bypass"]
CACHE_MODES: dict[int, CacheMode] = {
    pb.CACHE_MODE_READ_WRITE: "read_write",
    pb.CACHE_MODE_READ_ONLY: "read_only",
    pb.CACHE_MODE_BYPASS: "bypass",
}


@dataclass(frozen=True)
class RerankCall:
    """A validated request in engine terms."""

    model: str
    query: str
    documents: list[str]
    ids: list[str]
    plan: Plan  # resolved against the model
    truncation: Truncation
    top_n: int | None
    score_type: ScoreType
    return_documents: bool
    request_id: str
    cache_mode: CacheMode = "read_write"
    chunking: Chunking | None = None
    min_score: float | None = None  # a calibrated probability
    first_stage: list[float] | None = None  # documents[i].first_stage_score, on all documents or none


def to_call(
    req: pb.RerankRequest, models: dict[str, ModelInfo], default_model: str, settings: Settings
) -> RerankCall:
    """Validate `req` and translate it; raises UnknownModelError, or InvalidRequest listing every problem."""
    v: list[FieldViolation] = []
    add = v.append
    name = req.model or default_model
    info = check_model(name, models)
    if not req.query.strip():
        add(FieldViolation("query", "must not be empty"))
    elif len(req.query.encode()) > settings.max_query_bytes:
        add(FieldViolation("query", f"longer than {settings.max_query_bytes} bytes"))
    if not req.documents:
        add(FieldViolation("documents", "at least one document is required"))
    elif len(req.documents) > settings.max_documents:
        add(FieldViolation("documents", f"{len(req.documents)} documents; at most {settings.max_documents}"))
    for i, doc in enumerate(req.documents):
        if not doc.text.strip():
            add(FieldViolation(f"documents[{i}].text", "must not be empty"))
        elif len(doc.text.encode()) > settings.max_document_bytes:
            add(FieldViolation(f"documents[{i}].text", f"longer than {settings.max_document_bytes} bytes"))
    if req.top_n < 0:
        add(FieldViolation("top_n", f"must be >= 0, got {req.top_n}"))
    if req.depth < 0:
        add(FieldViolation("depth", f"must be >= 0 (0 = full depth), got {req.depth}"))
    if len(req.request_id) > 128:
        add(FieldViolation("request_id", "at most 128 characters"))
    _check_enums(req, add)
    truncation = _truncation(req, settings, add)
    width = _width(req, add)
    confidence, cascade, first_stage_exit = _early_exit(req, add)
    budget = _budget(req, add)
    chunking = _chunking(req, settings, add)
    min_score = req.min_score if req.HasField("min_score") else None
    if min_score is not None and not 0.0 <= min_score <= 1.0:  # NaN fails too
        add(FieldViolation("min_score", f"must be a probability within [0, 1], got {min_score}"))
    first_stage = _first_stage(req, add)
    if v:
        raise InvalidRequest(v)
    plan = Plan(
        depth=req.depth or None,
        width=width,
        confidence=confidence,
        cascade=cascade,
        budget=budget,
        first_stage=first_stage_exit,
    )
    shaped = req.depth or req.width or req.HasField("early_exit")
    if budget is not None and not shaped and info.budget_plan is not None:
        plan = replace(named_plan(info.budget_plan, info), budget=budget)  # the model's budget plan
    try:
        resolved = plan.resolve(info)
    except PlanError as exc:
        raise InvalidRequest([_wire_field(x, req) for x in exc.violations]) from exc
    return RerankCall(
        model=name,
        query=req.query,
        documents=[d.text for d in req.documents],
        ids=[d.id for d in req.documents],
        plan=resolved,
        truncation=truncation,
        top_n=req.top_n or None,
        score_type="logit" if req.score_type == pb.SCORE_TYPE_LOGIT else "probability",
        return_documents=req.return_documents,
        request_id=req.request_id,
        cache_mode=CACHE_MODES.get(req.cache_mode, "read_write"),
        chunking=chunking,
        min_score=min_score,
        first_stage=first_stage,
    )


def check_windows(windows: list[Window], settings: Settings) -> None:
    """A chunked request's windows against the limits; raises InvalidRequest naming each document
    over max_windows_per_document and `chunking` when the request is over max_windows_per_request."""
    most, total = settings.max_windows_per_document, settings.max_windows_per_request
    counts = sorted(Counter(w.document for w in windows).items())
    v = [
        FieldViolation(f"documents[{d}].text", f"{n} windows; at most {most}") for d, n in counts if n > most
    ]
    if len(windows) > total:
        v.append(FieldViolation("chunking", f"{len(windows)} windows in the request; at most {total}"))
    if v:
        raise InvalidRequest(v)


Add = Callable[[FieldViolation], None]


def _first_stage(req: pb.RerankRequest, add: Add) -> list[float] | None:
    """documents[i].first_stage_score: finite, and on every document or on none."""
    given = [d.HasField("first_stage_score") for d in req.documents]
    if not any(given):
        return None
    if not all(given):
        missing = [i for i, ok in enumerate(given) if not ok]
        for i in missing[:10]:
            add(FieldViolation(f"documents[{i}].first_stage_score", "set it on every document or on none"))
        return None
    scores = [d.first_stage_score for d in req.documents]
    for i, score in enumerate(scores):
        if not math.isfinite(score):
            add(FieldViolation(f"documents[{i}].first_stage_score", f"must be finite, got {score}"))
    return scores


def _check_enums(req: pb.RerankRequest, add: Add) -> None:
    """proto3 enums are open: unknown numbers arrive intact and are refused here."""
    enums: tuple[tuple[str, int, Any], ...] = (
        ("score_type", req.score_type, pb.ScoreType),
        ("truncation.side", req.truncation.side, pb.TruncationSide),
        ("cache_mode", req.cache_mode, pb.CacheMode),
        ("chunking.aggregate", req.chunking.aggregate, pb.Aggregate),
    )
    for field, value, enum in enums:
        if value not in enum.values():
            add(FieldViolation(field, f"unknown value {value}; one of {list(enum.keys())}"))


def _truncation(req: pb.RerankRequest, s: Settings, add: Add) -> Truncation:
    t = req.truncation
    if not 0 <= t.max_query_tokens <= s.max_query_tokens:
        add(FieldViolation("truncation.max_query_tokens", f"must be within 0..{s.max_query_tokens}"))
    if not 0 <= t.max_document_tokens <= s.max_document_tokens:
        add(FieldViolation("truncation.max_document_tokens", f"must be within 0..{s.max_document_tokens}"))
    return Truncation(
        max_query_tokens=max(t.max_query_tokens, 0) or s.max_query_tokens,
        max_passage_tokens=max(t.max_document_tokens, 0) or s.default_document_tokens,
        side="start" if t.side == pb.TRUNCATION_SIDE_START else "end",
    )


AGGREGATES: dict[int, Aggregate] = {pb.AGGREGATE_FIRST: "first", pb.AGGREGATE_MEAN: "mean"}


def _chunking(req: pb.RerankRequest, s: Settings, add: Add) -> Chunking | None:
    if not req.HasField("chunking"):
        return None
    c = req.chunking
    ok = True
    if not 1 <= c.window_tokens <= s.max_document_tokens:
        add(FieldViolation("chunking.window_tokens", f"must be within 1..{s.max_document_tokens}"))
        ok = False
    if not 0 <= c.overlap_tokens < max(c.window_tokens, 1):
        add(FieldViolation("chunking.overlap_tokens", "must be >= 0 and below window_tokens"))
        ok = False
    aggregate = AGGREGATES.get(c.aggregate, "max")
    return Chunking(c.window_tokens, c.overlap_tokens, aggregate) if ok else None


def _width(req: pb.RerankRequest, add: Add) -> dict[int, WidthTarget]:
    width: dict[int, WidthTarget] = {}
    for i, step in enumerate(req.width):
        kind = step.WhichOneof("target")
        if kind is None:
            add(FieldViolation(f"width[{i}]", "set ratio or length"))
        elif step.layer in width:
            add(FieldViolation(f"width[{i}].layer", f"layer {step.layer} appears twice"))
        elif kind == "ratio":
            width[step.layer] = WidthTarget(ratio=step.ratio)
        else:
            width[step.layer] = WidthTarget(length=step.length)
    return width


Exits = tuple[ConfidenceExit | None, CascadeExit | None, FirstStageExit | None]


def _early_exit(req: pb.RerankRequest, add: Add) -> Exits:
    """early_exit's policies (first_stage.top_n is checked by Plan.resolve)."""
    confidence = cascade = None
    ee = req.early_exit
    if ee.HasField("confidence"):
        c = ee.confidence
        both_unset = not c.HasField("relevant") and not c.HasField("irrelevant")
        default = ConfidenceExit()
        confidence = ConfidenceExit(
            relevant=c.relevant if c.HasField("relevant") else (default.relevant if both_unset else None),
            irrelevant=c.irrelevant
            if c.HasField("irrelevant")
            else (default.irrelevant if both_unset else None),
            min_layer=c.min_layer or 1,
        )
    if ee.HasField("cascade"):
        c2 = ee.cascade
        top_n = c2.top_n or req.top_n
        if top_n <= 0:
            add(FieldViolation("early_exit.cascade.top_n", "set it, or the request's top_n (both are 0)"))
        cascade = CascadeExit(
            top_n=max(top_n, 1),
            margin=c2.margin if c2.HasField("margin") else CascadeExit(top_n=1).margin,
            patience=c2.patience or CascadeExit(top_n=1).patience,
            min_layer=c2.min_layer or 1,
        )
    first_stage = FirstStageExit(top_n=ee.first_stage.top_n) if ee.HasField("first_stage") else None
    return confidence, cascade, first_stage


def _budget(req: pb.RerankRequest, add: Add) -> Budget | None:
    if not req.HasField("budget"):
        return None
    b = req.budget
    seconds = None
    if b.HasField("max_latency"):
        seconds = b.max_latency.seconds + b.max_latency.nanos / 1e9
        if not seconds > 0:
            add(FieldViolation("budget.max_latency", f"must be > 0, got {seconds}s"))
    flops = b.max_flops if b.HasField("max_flops") else None
    if flops is not None and not (math.isfinite(flops) and flops > 0):
        add(FieldViolation("budget.max_flops", f"must be a finite number > 0, got {flops}"))
    if seconds is None and flops is None:
        add(FieldViolation("budget", "set max_latency and/or max_flops"))
    return Budget(max_seconds=seconds, max_flops=flops)


_RENAMES = {
    "confidence": "early_exit.confidence",
    "cascade": "early_exit.cascade",
    "first_stage": "early_exit.first_stage",
}


def _wire_field(v: FieldViolation, req: pb.RerankRequest) -> FieldViolation:
    """Engine field names -> the request's proto paths."""
    name = v.field
    head, _, rest = name.partition(".")
    if head in _RENAMES:
        name = _RENAMES[head] + (f".{rest}" if rest else "")
    elif name == "budget.max_seconds":
        name = "budget.max_latency"
    elif head.startswith("width[") and head.endswith("]"):
        layer = int(head[len("width[") : -1])
        index = next((i for i, s in enumerate(req.width) if s.layer == layer), layer)
        name = f"width[{index}]" + (f".{rest}" if rest else "")
    return FieldViolation(name, v.description)
