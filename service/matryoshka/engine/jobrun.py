"""One job inside the engine: its rows' states in buckets, scores so far, exit schedule, usage, timing.

A job's rows advance together from its *frontier* (the lowest layer any of its rows is at): a step
may advance only some of its buckets, and the job is scored at a layer once every row has reached it.
Rows resumed from a cached state wait until the job reaches their layer, then join; rows with cached
scores get those replayed to the exit policy instead of being scored (engine/replay.py), and each
row's FLOPs from its embeddings on are tracked so the cache can store what its layers cost.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from matryoshka.engine.aggregate import Grouping
from matryoshka.engine.cost import Usage
from matryoshka.engine.exits import Decisions, ExitReason, ExitSchedule, Standing
from matryoshka.engine.fusion import fused_keys, fused_standing
from matryoshka.engine.job import EngineError, Job, JobResult, Outcome, ScoredLayer
from matryoshka.engine.replay import CacheLedger
from matryoshka.model.state import LayerState, RowState

StageListener = Callable[[int, list[Outcome]], None]  # (layer, outcomes so far)


@dataclass
class Bucket:
    """Rows of one job at one layer, right-padded together."""

    state: LayerState
    rows: Tensor  # (batch,) the job's row indices

    @property
    def layer(self) -> int:
        """Layers applied so far."""
        return self.state.layer

    @property
    def padded_tokens(self) -> int:
        """Rows x padded width: what one layer step over this bucket processes."""
        return int(self.state.hidden.shape[0] * self.state.hidden.shape[1])


@dataclass(frozen=True)
class Limits:
    """How large one bucket may be (rows, padded tokens)."""

    rows: int
    tokens: int

    def chunks(self, order: list[int], length_of: Callable[[int], int]) -> list[list[int]]:
        """Split rows (sorted longest first) into runs that fit one bucket."""
        chunks: list[list[int]] = []
        for row in order:
            if chunks:
                last = chunks[-1]
                width = max(length_of(last[0]), length_of(row))
                if len(last) < self.rows and width * (len(last) + 1) <= self.tokens:
                    last.append(row)
                    continue
            chunks.append([row])
        return chunks


class JobRun:
    """The engine's state of one job from admission to answer."""

    def __init__(
        self,
        job: Job,
        tokens: list[int],
        query_tokens: int,
        listener: StageListener | None = None,
    ) -> None:
        assert job.plan.depth is not None, "jobs need resolved plans (Plan.resolve)"
        n = len(tokens)
        self.job = job
        self.tokens = tokens
        self.query_tokens = query_tokens
        self.listener = listener
        self.schedule = ExitSchedule(job.plan, job.deadline, started=job.arrived)
        self.grouping: Grouping | None = None
        if job.chunking is not None and job.windows is not None:
            self.grouping = Grouping(job.windows, len(job.documents), job.chunking.aggregate)
        self.usage = Usage(rows=n)
        self.logit = torch.full((n,), math.nan, dtype=torch.float64)
        self.prob = torch.full((n,), math.nan, dtype=torch.float64)
        self.exit_layer = torch.zeros(n, dtype=torch.long)
        self.reason: list[ExitReason | None] = [None] * n
        self.active = torch.ones(n, dtype=torch.bool)
        self.buckets: list[Bucket] = []
        self.pending: dict[int, list[tuple[int, RowState | None]]] = {}  # None: cached scores only
        self.states: dict[int, RowState] = {}
        self.scores: dict[int, dict[int, ScoredLayer]] = {}  # with `states`: each row's scored layers
        self.ledger = CacheLedger()
        self.row_flops = torch.zeros(n, dtype=torch.float64)  # per row, cached prefix included
        self.history: list[dict[int, ScoredLayer]] = [{} for _ in range(n)]  # each row's scores so far
        self.scored_through = 0  # the last layer the job was scored (or replayed) at
        self.partial = False
        self.error: EngineError | None = None
        self.priority = math.inf  # the ordering key (engine/policy.py); lower runs first
        self.first_step: float | None = None
        self.compute_seconds = 0.0
        self.fusion: Mapping[int, float] = {}  # per-layer fusion weights (the model's; engine/fusion.py)

    @property
    def count(self) -> int:
        """Rows in the job: documents, or windows when it is chunked."""
        return len(self.tokens)

    @property
    def done(self) -> bool:
        """Failed, or every row has exited."""
        return self.error is not None or not bool(self.active.any())

    @property
    def layer(self) -> int:
        """The frontier: the lowest layer an active row of this job is at."""
        layers = [b.layer for b in self.buckets] or list(self.pending)
        return min(layers, default=0)

    @property
    def at_one_layer(self) -> bool:
        """True when every active row is at the frontier (the job can be scored there)."""
        return all(b.layer == self.layer for b in self.buckets)

    def frontier(self) -> list[Bucket]:
        """Buckets at the frontier: the only ones a step may advance."""
        low = self.layer
        return [b for b in self.buckets if b.layer == low]

    def layer_flops(self, per_row: Callable[[Tensor], Tensor]) -> float:
        """FLOPs of one layer over this job's active rows, from a per-row FLOP function."""
        return sum(float(per_row(b.state.lengths.cpu()).sum()) for b in self.buckets)

    def scores_at(self, layer: int, head_layers: tuple[int, ...]) -> bool:
        """Score at the depth; earlier only at head layers where this job can act on a score: from
        its first allowed exit on, or everywhere when a budget or deadline may need a partial answer."""
        depth = self.schedule.depth
        if layer == depth:
            return True
        if layer > depth or layer not in head_layers:
            return False
        if self.schedule.budget is not None:
            return True
        plan = self.job.plan
        policies = [p for p in (plan.confidence, plan.cascade) if p is not None]
        return bool(policies) and layer >= min(p.min_layer for p in policies)

    # -- rows -----------------------------------------------------------------------------------

    def join(self, layer: int, limits: Limits, device: torch.device, dtype: torch.dtype) -> None:
        """Resumed rows cached at `layer` join the job's buckets (rows with only cached scores do not)."""
        rows = [(r, s) for r, s in self.pending.pop(layer, []) if s is not None and self.active[r]]
        for r, s in rows:
            self.row_flops[r] = self.ledger.resume(r, s.layer)
        rows.sort(key=lambda rs: -rs[1].length)
        lookup = dict(rows)
        for chunk in limits.chunks([r for r, _ in rows], lambda r: lookup[r].length):
            moved = [
                RowState(
                    lookup[r].hidden.to(device, dtype),
                    lookup[r].segments.to(device),
                    lookup[r].token_ids.to(device),
                    lookup[r].layer,
                    lookup[r].compression,
                )
                for r in chunk
            ]
            self.buckets.append(Bucket(LayerState.from_rows(moved), torch.tensor(chunk, dtype=torch.long)))

    def compact(self, limits: Limits) -> None:
        """Drop exited rows (trimming padding) and merge small buckets at the same layer."""
        kept: list[Bucket] = []
        for b in self.buckets:
            keep = self.active[b.rows]
            if bool(keep.all()):
                kept.append(b)
            elif bool(keep.any()):
                idx = keep.nonzero().flatten()
                kept.append(Bucket(b.state.select(idx.to(b.state.hidden.device)), b.rows[idx]))
        merged: list[Bucket] = []
        for b in sorted(kept, key=lambda b: (b.layer, -b.state.hidden.shape[1])):
            if merged and merged[-1].layer == b.layer:
                last = merged[-1]
                rows = last.state.batch_size + b.state.batch_size
                width = max(last.state.hidden.shape[1], b.state.hidden.shape[1])
                if rows <= limits.rows and rows * width <= limits.tokens:
                    merged[-1] = Bucket(
                        LayerState.concat([last.state, b.state]), torch.cat([last.rows, b.rows])
                    )
                    continue
            merged.append(b)
        self.buckets = merged

    def row_state(self, row: int) -> RowState | None:
        """The current state of one row (None for a resumed row still waiting for its layer)."""
        for b in self.buckets:
            hit = (b.rows == row).nonzero().flatten()
            if hit.numel():
                return b.state.row(int(hit[0]))
        return None

    def decide(self, layer: int) -> Decisions:
        """The exit schedule's decisions on the rows at `layer` (on documents when chunked). A cascade
        ranks by the fused keys the answer is ranked by where the job has first-stage scores, else by
        probability (engine/exits.py)."""
        fused = self.job.first_stage is not None and self.job.plan.cascade is not None
        if self.grouping is not None:
            g = self.grouping
            rank = (lambda docs: self.standing(docs, g.layers(self.exit_layer))) if fused else None
            return g.decide(self.schedule, layer, self.prob, self.active, rank)
        standing = self.standing(self.prob, self.exit_layer) if fused else None
        return self.schedule.decide(layer, self.prob, self.active, standing)

    def standing(self, probs: Tensor, exit_layers: Tensor) -> Standing:
        """The fused keys of these documents under a probability lift (engine/fusion.py)."""
        assert self.job.first_stage is not None, "only a job with first-stage scores ranks fused"
        return fused_standing(probs, exit_layers, self.job.first_stage, self.fusion)

    def exit(self, decisions: dict[int, ExitReason], layer: int | None = None) -> None:
        """Rows leave with their reasons; a decision at `layer` resting on a cached score is a
        CACHE_HIT (no compute). Others hand back their state and scores if the job asked."""
        for row, reason in decisions.items():
            self.active[row] = False
            hit = self.ledger.hit(row, layer) if layer is not None else None
            if hit is not None and reason != ExitReason.BUDGET:
                reason = ExitReason.CACHE_HIT
                self.usage.cache_hits += 1
                self.usage.cached_flops += hit.flops
            elif self.job.keep_states and (state := self.row_state(row)) is not None:
                self.states[row] = state
                self.scores[row] = self.history[row]
            self.reason[row] = reason

    def scored(self, rows: Tensor, layer: int, logits: Tensor, calibrated: Tensor, flops_each: float) -> None:
        """The model scored `rows` at `layer`: raw head `logits` (what the cache keeps) and their
        `calibrated` logits (what is reported and decided on); `flops_each` FLOPs a row."""
        self._record(rows, layer, calibrated)
        self.row_flops[rows] += flops_each
        for r, raw in zip(rows.tolist(), logits.double().cpu().tolist(), strict=True):
            self.history[r][layer] = ScoredLayer(raw, float(self.row_flops[r]))

    def replayable(self, layer: int) -> list[int]:
        """Active rows with a cached score at `layer` (replayed instead of scored)."""
        return [r for r in self.ledger.rows_at(layer) if bool(self.active[r])]

    def replayable_any(self) -> list[int]:
        """Active rows with cached scores at any layer."""
        return [r for r in self.ledger.scores if bool(self.active[r])]

    def replayed(self, rows: list[int], layer: int, calibrated: Tensor) -> None:
        """`rows` got their cached scores at `layer` (`calibrated`: the cached logits calibrated)."""
        for r in rows:
            self.history[r][layer] = self.ledger.replay(r, layer)
        self._record(torch.tensor(rows, dtype=torch.long), layer, calibrated)

    def _record(self, rows: Tensor, layer: int, calibrated: Tensor) -> None:
        self.logit[rows] = calibrated.double().cpu()
        self.prob[rows] = torch.sigmoid(self.logit[rows])
        self.exit_layer[rows] = layer

    def exit_by_first_stage(self) -> None:
        """Before layer 1, documents below the first stage's top n (the plan's FirstStageExit; by
        first-stage score, ties by index, else the input order) stop unscored with reason CASCADE:
        exit layer 0, probability 0, so they keep their first-stage place (engine/fusion.py)."""
        cut = self.job.plan.first_stage
        documents = self.grouping.documents if self.grouping is not None else self.count
        if cut is None or cut.top_n >= documents:
            return
        first = self.job.first_stage
        order = list(range(documents))
        if first is not None:
            order.sort(key=lambda d: (-first[d], d))
        rows: list[int] = []
        for d in order[cut.top_n :]:
            rows += self.grouping.rows[d].tolist() if self.grouping is not None else [d]
        self._unscored(torch.tensor(rows, dtype=torch.long))
        self.exit(dict.fromkeys(rows, ExitReason.CASCADE))

    def _unscored(self, rows: Tensor) -> None:
        """`rows` (indices or a mask) answer without a score: probability 0 at exit layer 0, which ranks
        them by their first-stage place (engine/fusion.py), else after every scored row in input order."""
        self.prob[rows] = 0.0
        self.logit[rows] = -math.inf
        self.exit_layer[rows] = 0

    def stop_for_budget(self) -> None:
        """Every running row exits BUDGET with its latest score; rows never scored (probability 0, exit
        layer 0) keep their first-stage place where the job has first-stage scores, else the input order."""
        self._unscored(torch.isnan(self.prob) & self.active)
        self.exit({int(i): ExitReason.BUDGET for i in self.active.nonzero().flatten()})
        self.partial = True
        self.buckets = []
        self.pending = {}

    def fail(self, error: EngineError) -> None:
        """End the job with an error; its rows leave at once."""
        self.error = error
        self.active[:] = False
        self.buckets = []
        self.pending = {}

    # -- answers --------------------------------------------------------------------------------

    def outcomes(self) -> list[Outcome]:
        """Each document's latest score, exit layer and reason (None while still running); a chunked
        job's documents aggregate their windows' (engine/aggregate.py); with first-stage scores, each
        document carries its fused ranking key (engine/fusion.py)."""
        rows = [
            Outcome(
                index=i,
                logit=float(self.logit[i]),
                probability=float(self.prob[i]),
                exit_layer=int(self.exit_layer[i]),
                exit_reason=self.reason[i],
                tokens=self.tokens[i],
            )
            for i in range(self.count)
        ]
        documents = self.grouping.outcomes(rows) if self.grouping is not None else rows
        first = self.job.first_stage
        if first is None:
            return documents
        probabilities = [o.probability for o in documents]
        keys = fused_keys(probabilities, [o.exit_layer for o in documents], first, self.fusion)
        return [replace(o, fused=key) for o, key in zip(documents, keys, strict=True)]

    def result(self) -> JobResult | EngineError:
        """The finished job's answer, or the error that ended it."""
        if self.error is not None:
            return self.error
        started = self.first_step if self.first_step is not None else time.monotonic()
        for row, flops in self.ledger.take_resumed().items():  # counted once
            if self.reason[row] != ExitReason.CACHE_HIT:
                self.usage.cache_resumed += 1
                self.usage.cached_flops += flops
        return JobResult(
            outcomes=self.outcomes(),
            usage=self.usage,
            partial=self.partial,
            states=self.states,
            compute_seconds=self.compute_seconds,
            queue_seconds=max(started - self.job.arrived, 0.0),
            scores=self.scores,
        )
