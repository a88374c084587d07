"""Plain Python types of the client API: request options in, results out (no protobuf in sight)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal, TypeAlias, TypedDict

ScoreType = Literal["probability", "logit"]
CacheMode = Literal["read_write", "read_only", "bypass"]
TruncationSide = Literal["end", "start"]
Aggregate = Literal["max", "first", "mean"]


@dataclass(frozen=True)
class Document:
    """A candidate document: its text and, optionally, the caller's id (echoed in the result) and the
    first-stage retriever's score (any finite number, higher = better; give it for every document of a
    request or for none)."""

    text: str
    id: str = ""
    first_stage_score: float | None = None


DocumentInput: TypeAlias = str | tuple[str, str] | Mapping[str, str | float | None] | Document
"""A document as `rerank` accepts it: its text, an (id, text) pair, a {"id", "text", "first_stage_score"}
mapping ("text" required) or a Document."""


@dataclass(frozen=True)
class WidthStep:
    """Merge tokens after `layer` (1-based): shrink each document by `ratio` (>= 1), or each whole row to
    `length` tokens. Exactly one of ratio and length."""

    layer: int
    ratio: float | None = None
    length: int | None = None

    def __post_init__(self) -> None:
        if (self.ratio is None) == (self.length is None):
            raise ValueError(f"WidthStep(layer={self.layer}): set exactly one of ratio or length")


@dataclass(frozen=True)
class ConfidenceExit:
    """Per-candidate exit on calibrated probability (>= `relevant` or <= `irrelevant`), never before
    `min_layer` (0 = the first head layer). Leave both thresholds None for the server's defaults; set one
    to use that side only."""

    relevant: float | None = None
    irrelevant: float | None = None
    min_layer: int = 0


@dataclass(frozen=True)
class CascadeExit:
    """Top-n cascade: drop candidates trailing the n-th best by more than `margin`, stop once the top n
    has been stable for `patience` head layers. 0 / None = the server's default (top_n: the request's
    top_n; margin 0.1; patience 3; min_layer 1)."""

    top_n: int = 0
    margin: float | None = None
    patience: int = 0
    min_layer: int = 0


@dataclass(frozen=True)
class Budget:
    """Bounds on one request: wall-clock time (seconds or a timedelta) and/or FLOPs. When the next layer
    would not fit, the server returns what it has (`RerankResult.partial`)."""

    max_latency: float | timedelta | None = None
    max_flops: float | None = None

    @property
    def max_latency_seconds(self) -> float | None:
        """`max_latency` in seconds."""
        if isinstance(self.max_latency, timedelta):
            return self.max_latency.total_seconds()
        return self.max_latency


@dataclass(frozen=True)
class Truncation:
    """Token limits for the query and each document (0 = the model's default), and which end is cut."""

    max_query_tokens: int = 0
    max_document_tokens: int = 0
    side: TruncationSide | None = None


@dataclass(frozen=True)
class Chunking:
    """Split long documents into windows of `window_tokens` document tokens, each sharing
    `overlap_tokens` with the one before, instead of truncating them. A document's score aggregates its
    windows': "max" (the best window, the default), "first" (only the first window runs) or "mean"."""

    window_tokens: int
    overlap_tokens: int = 0
    aggregate: Aggregate | None = None


class RerankOptions(TypedDict, total=False):
    """Keyword options of `rerank` and `stream_rerank`; every one may be left out (server defaults)."""

    model: str  # "" = the server's default model
    top_n: int | None  # None / 0 = all documents
    return_documents: bool
    depth: int | None  # last layer to run; None / 0 = full depth
    width: Sequence[WidthStep]
    confidence: ConfidenceExit | None
    cascade: CascadeExit | None
    first_stage_top_n: int | None  # only the first stage's best N documents run; None = all
    budget: Budget | None
    score_type: ScoreType
    truncation: Truncation | None
    cache_mode: CacheMode | None
    request_id: str
    chunking: Chunking | None  # None = no chunking: each document is one row, truncated
    min_score: float | None  # drop results whose calibrated probability is below this (in [0, 1])


@dataclass(frozen=True)
class Window:
    """The window of a chunked document that decided its score: the `index`-th of `count`, and its
    [start, end) offsets into the document's text in code points (so `text[start:end]` in Python)."""

    index: int
    count: int
    start: int
    end: int

    def text(self, document: str) -> str:
        """The window's text, cut from the document's text as sent."""
        return document[self.start : self.end]


@dataclass(frozen=True)
class ScoredDocument:
    """One re-ranked document.

    `exit_reason` is one of "depth", "confident_relevant", "confident_irrelevant", "cascade", "stable",
    "budget", "cache_hit"; "" while the document is still running (stream stages only); "unknown_<n>"
    for a reason newer than this client.
    """

    index: int  # position in the request's documents
    id: str
    score: float
    exit_layer: int
    exit_reason: str
    document: str | None = None  # the text, when return_documents was asked for
    window: Window | None = None  # with chunking: the window that decided the score

    @property
    def running(self) -> bool:
        """True in a stream stage while the document has not exited yet."""
        return self.exit_reason == ""


@dataclass(frozen=True)
class Usage:
    """Work a request did, against a full-depth, full-width run of the same documents."""

    layer_tokens: int = 0
    flops: float = 0.0
    full_flops: float = 0.0
    flops_saved: float = 0.0  # fraction of full_flops not spent (work the cache stood in for counts as spent)
    cached_flops: float = 0.0  # FLOPs earlier requests spent on cached layers reused here
    cache_hits: int = 0  # documents answered from the cache with no compute
    cache_resumed: int = 0  # documents resumed from a cached layer state
    rows: int = 0  # rows the engine scored: documents, or windows when the request is chunked


@dataclass(frozen=True)
class Timing:
    """Server-side seconds: waiting for a batch, computing, and in all."""

    queue_seconds: float = 0.0
    compute_seconds: float = 0.0
    total_seconds: float = 0.0


@dataclass(frozen=True)
class RerankResult:
    """The documents best first, what the run cost, and whether the budget cut it short."""

    results: list[ScoredDocument]
    usage: Usage
    timing: Timing
    partial: bool
    model: str
    request_id: str


@dataclass(frozen=True)
class RerankStage:
    """One message of `stream_rerank`: the ranking after `layer`. On the last one (`final`) every
    document has its exit reason and `usage` and `timing` are set."""

    layer: int
    results: list[ScoredDocument]
    final: bool
    usage: Usage | None
    timing: Timing | None
    partial: bool
    model: str
    request_id: str

    def result(self) -> RerankResult:
        """The final stage as a RerankResult (what `rerank` would have returned)."""
        if not self.final or self.usage is None or self.timing is None:
            raise ValueError("only the final stage is a complete result")
        return RerankResult(self.results, self.usage, self.timing, self.partial, self.model, self.request_id)


@dataclass(frozen=True)
class ModelLimits:
    """What one request may ask of a model."""

    max_documents: int
    max_request_bytes: int
    max_query_tokens: int
    max_document_tokens: int
    max_windows_per_document: int = 0  # most windows one document may be split into (Chunking)
    max_windows_per_request: int = 0  # most windows one chunked request may hold, all documents together


@dataclass(frozen=True)
class ModelInfo:
    """A model the server serves. `family` is "decoder" or "encoder", `scoring` "heads",
    "query_likelihood" or "cosine" ("" if the server does not say)."""

    name: str
    family: str
    num_layers: int
    hidden_size: int
    head_layers: tuple[int, ...]
    scoring: str
    merge_ratios: tuple[float, ...]
    limits: ModelLimits
    default_truncation: Truncation
    calibration_version: str
    fingerprint: str
    template_version: str
    is_default: bool
    dtype: str = ""  # "float32" or "bfloat16" ("" if the server does not say)
    budget_plan: str = ""  # what a budget-only request runs, e.g. "adaptive: full depth, ..." ("" = full)
