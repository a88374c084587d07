"""What the engine is asked and what it answers: a Job (query, documents, resolved plan, deadline),
each document's Outcome, the JobResult, and the errors a job can end in."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from matryoshka.engine.cost import Usage
from matryoshka.engine.exits import ExitReason
from matryoshka.engine.plan import Plan
from matryoshka.model.prompt import EncodedPair, Truncation
from matryoshka.model.state import RowState
from matryoshka.model.window import Chunking, Window


class EngineError(Exception):
    """A request the engine could not answer."""


class BudgetExceededError(EngineError):
    """The caller's deadline had already passed when the job arrived: there is no time to answer in."""


class RequestCancelledError(EngineError):
    """The caller cancelled; the request stopped at a layer boundary."""


class JobFailedError(EngineError):
    """Running this job's own rows raised; the job failed alone (its neighbours carried on)."""


class ScoredLayer(NamedTuple):
    """A row's raw score at one layer and its FLOPs from the embeddings through that score."""

    logit: float
    flops: float


@dataclass
class Job:
    """One request for the executor: a query, its documents and a resolved plan."""

    query: str
    documents: Sequence[str]
    plan: Plan
    truncation: Truncation = field(default_factory=Truncation)
    resume: Mapping[int, RowState] = field(default_factory=dict)  # document index -> cached state
    keep_states: bool = False  # hand back each row's state (and its scores so far) at its exit layer
    cancelled: Callable[[], bool] | None = None
    deadline: float | None = None  # absolute time.monotonic() the answer is due by (a gRPC deadline)
    arrived: float = field(default_factory=time.monotonic)  # when the request came in (budgets count from it)
    pairs: Sequence[EncodedPair] | None = None  # the documents already tokenised (the cache keyed them)
    # document index -> layer -> cached score: replayed to the exit policy instead of scoring; a
    # document with a cached score at the depth and no `resume` state needs no compute at all
    cached_scores: Mapping[int, Mapping[int, ScoredLayer]] = field(default_factory=dict)
    # with chunking, rows are windows of the documents (model/window.py); `resume`, `cached_scores`
    # and `pairs` are then keyed by row, and `windows` (one per row) comes with `pairs`
    chunking: Chunking | None = None
    windows: Sequence[Window] | None = None
    # each document's first-stage score (higher = better), or None: ranked by fusion (engine/fusion.py)
    first_stage: Sequence[float] | None = None


@dataclass
class Outcome:
    """One document's (or row's) result: scores at its exit layer and why it exited there."""

    index: int
    logit: float  # the calibrated logit (log-odds) at the exit layer: the probability's, same order
    probability: float
    exit_layer: int
    exit_reason: ExitReason | None  # None while still running (stage snapshots)
    tokens: int  # input tokens before any merging
    window: Window | None = None  # with chunking: the window that decided the document's score
    fused: float | None = None  # the ranking key fused with the first stage (None: rank by probability)


@dataclass
class JobResult:
    """The executor's answer to one Job."""

    outcomes: list[Outcome]
    usage: Usage
    partial: bool  # some documents stopped for the budget
    states: dict[int, RowState]
    compute_seconds: float  # wall time of the engine steps that ran this job's rows
    queue_seconds: float = 0.0  # from arrival until its first layer ran
    scores: dict[int, dict[int, ScoredLayer]] = field(default_factory=dict)  # with `states`: scored layers
