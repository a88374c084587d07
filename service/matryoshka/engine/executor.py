"""The executor: runs the (query, passage) rows of one or more requests layer by layer.

Per layer: run the layer on every bucket (rows of similar length, padded to the bucket's longest),
merge width where a row's plan says so, score at head layers, let each request's exit schedule
decide, and remove exited rows so later layers really compute less. Rows resumed from a cached
state join when the others reach their layer; cached scores are replayed to the exit policy instead
of scoring (an exit on one is a CACHE_HIT). Exiting rows can hand back their state and scores.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from matryoshka.engine.cost import FlopCounter, LatencyModel
from matryoshka.engine.exits import ExitReason, ExitSchedule
from matryoshka.engine.job import (
    BudgetExceededError,
    EngineError,
    Job,
    JobResult,
    Outcome,
    RequestCancelledError,
    ScoredLayer,
)
from matryoshka.engine.job_run import JobRun
from matryoshka.engine.replay import CacheLedger
from matryoshka.model.matryoshka_model import MatryoshkaModel
from matryoshka.model.prompt import EncodedPair
from matryoshka.model.state import LayerState, RowState, Segment
from matryoshka.model.width import merge_rows

StageCallback = Callable[[int, int, list[Outcome]], None]  # (job index, layer, outcomes so far)


@dataclass
class _Bucket:
    state: LayerState
    rows: Tensor  # (batch,) global row ids


class Executor:
    """Runs jobs on one model; holds the latency model that budget predictions use."""

    def __init__(
        self,
        model: MatryoshkaModel,
        *,
        max_batch_rows: int = 64,
        max_batch_tokens: int = 16384,
        latency: LatencyModel | None = None,
    ) -> None:
        self.model = model
        self.flops = FlopCounter(model.backbone, model.scorer)
        self.max_batch_rows = max_batch_rows
        self.max_batch_tokens = max_batch_tokens
        self.latency = latency or LatencyModel()

    def run(
        self, jobs: Sequence[Job], on_stage: StageCallback | None = None
    ) -> list[JobResult | EngineError]:
        """Run jobs together; each gets a JobResult, or the EngineError that ended it."""
        with torch.inference_mode():
            return _Run(self, jobs, on_stage).execute()


class _Run:
    """State of one executor call (kept apart so the Executor itself stays reusable)."""

    def __init__(self, ex: Executor, jobs: Sequence[Job], on_stage: StageCallback | None) -> None:
        self.ex = ex
        self.model = ex.model
        self.head_layers = ex.model.scorer.head_layers
        self.on_stage = on_stage
        self.runs: list[JobRun] = []
        fresh: list[tuple[int, EncodedPair]] = []
        self.pending: dict[int, list[tuple[int, RowState | None]]] = {}  # None: cached scores only
        self.ledger = CacheLedger()
        tokens: list[int] = []
        job_of: list[int] = []
        for j, job in enumerate(jobs):
            if job.plan.depth is None:
                raise ValueError("jobs need resolved plans (Plan.resolve)")
            pairs = (
                list(job.pairs)
                if job.pairs is not None
                else self.model.encode(job.query, list(job.documents), job.truncation)
            )
            query_tokens = sum(s == Segment.QUERY for s in pairs[0].segments) if pairs else 0
            schedule = ExitSchedule(job.plan, job.deadline)
            run = JobRun(job, len(tokens), len(pairs), schedule, query_tokens)
            lengths = torch.tensor([len(p.input_ids) for p in pairs], dtype=torch.long)
            run.usage.full_flops = ex.flops.full(lengths, query_tokens)
            for index, pair in enumerate(pairs):
                row = len(tokens)
                tokens.append(len(pair.input_ids))
                job_of.append(j)
                cached = job.resume.get(index)
                if index in job.cached_scores:
                    self.ledger.add(row, job.cached_scores[index])
                if cached is None and self.ledger.has(row, job.plan.depth):
                    self.pending.setdefault(job.plan.depth, []).append((row, None))
                elif cached is None:
                    fresh.append((row, pair))
                elif cached.layer > job.plan.depth:
                    raise ValueError(
                        f"document {index}: cached state at layer {cached.layer} is past the depth"
                    )
                else:
                    self.pending.setdefault(cached.layer, []).append((row, cached))
            self.runs.append(run)
        n = len(tokens)
        self.tokens = tokens
        self.job_of = torch.tensor(job_of, dtype=torch.long)
        self.logit = torch.full((n,), float("nan"), dtype=torch.float64)
        self.prob = torch.full((n,), float("nan"), dtype=torch.float64)
        self.exit_layer = torch.zeros(n, dtype=torch.long)
        self.reason: list[ExitReason | None] = [None] * n
        self.active = torch.ones(n, dtype=torch.bool)
        self.row_flops = torch.zeros(n, dtype=torch.float64)  # per row, cached prefix included
        self.history: list[dict[int, ScoredLayer]] = [{} for _ in range(n)]  # each row's scores so far
        self.buckets = self._embed(fresh)

    # -- batching -------------------------------------------------------------------------------

    def _chunks(self, order: list[int], length_of: Callable[[int], int]) -> list[list[int]]:
        chunks: list[list[int]] = []
        for row in order:
            if chunks:
                last = chunks[-1]
                width = max(length_of(last[0]), length_of(row))
                if len(last) < self.ex.max_batch_rows and width * (len(last) + 1) <= self.ex.max_batch_tokens:
                    last.append(row)
                    continue
            chunks.append([row])
        return chunks

    def _embed(self, fresh: list[tuple[int, EncodedPair]]) -> list[_Bucket]:
        by_row = dict(fresh)
        order = sorted(by_row, key=lambda r: -len(by_row[r].input_ids))
        buckets = []
        for chunk in self._chunks(order, lambda r: len(by_row[r].input_ids)):
            state = self.model.embed([by_row[r] for r in chunk])
            buckets.append(_Bucket(state, torch.tensor(chunk, dtype=torch.long)))
        return buckets

    def _join(self, layer: int) -> None:
        arrivals = self.pending.pop(layer, [])
        rows = [(r, s) for r, s in arrivals if s is not None and self.active[r]]
        if not rows:
            return
        for r, s in rows:
            self.row_flops[r] = self.ledger.resume(r, s.layer)
        rows.sort(key=lambda rs: -rs[1].length)
        lookup = dict(rows)
        device = self.model.backbone.device
        dtype = self.model.backbone.dtype
        for chunk in self._chunks([r for r, _ in rows], lambda r: lookup[r].length):
            states = [lookup[r] for r in chunk]
            moved = [
                RowState(
                    s.hidden.to(device, dtype),
                    s.segments.to(device),
                    s.token_ids.to(device),
                    s.layer,
                    s.compression,
                )
                for s in states
            ]
            self.buckets.append(_Bucket(LayerState.from_rows(moved), torch.tensor(chunk, dtype=torch.long)))

    def _compact(self) -> None:
        kept: list[_Bucket] = []
        for b in self.buckets:
            keep = self.active[b.rows]
            if bool(keep.all()):
                kept.append(b)
            elif bool(keep.any()):
                idx = keep.nonzero().flatten()
                kept.append(_Bucket(b.state.select(idx.to(b.state.hidden.device)), b.rows[idx]))
        merged: list[_Bucket] = []
        for b in sorted(kept, key=lambda b: -b.state.hidden.shape[1]):
            if merged:
                last = merged[-1]
                rows = last.state.batch_size + b.state.batch_size
                width = max(last.state.hidden.shape[1], b.state.hidden.shape[1])
                if rows <= self.ex.max_batch_rows and rows * width <= self.ex.max_batch_tokens:
                    merged[-1] = _Bucket(
                        LayerState.concat([last.state, b.state]), torch.cat([last.rows, b.rows])
                    )
                    continue
            merged.append(b)
        self.buckets = merged

    # -- the layer loop -------------------------------------------------------------------------

    def execute(self) -> list[JobResult | EngineError]:
        max_depth = max((r.schedule.depth for r in self.runs if r.count), default=0)
        for layer in range(0, max_depth + 1):
            if layer > 0:
                self._check_interrupts(layer)
                self._run_layer(layer)
            self._join(layer)
            if any(r.scores_at(layer, self.head_layers) for r in self.runs):
                self._score_and_exit(layer)
            self._compact()
            if not self.buckets and not any(k > layer for k in self.pending):
                break
        return [self._result(r) for r in self.runs]

    def _check_interrupts(self, layer: int) -> None:
        for run in self.runs:
            if run.error is not None or not bool(self.active[run.first : run.first + run.count].any()):
                continue
            if run.job.cancelled is not None and run.job.cancelled():
                self._fail(run, RequestCancelledError(f"cancelled before layer {layer}"))
            elif run.schedule.budget is not None and not run.scored_once and run.schedule.budget.expired():
                first = min((h for h in self.head_layers if run.scores_at(h, self.head_layers)), default=0)
                self._fail(
                    run, BudgetExceededError(f"the budget ran out before the first head layer ({first})")
                )

    def _fail(self, run: JobRun, error: EngineError) -> None:
        run.error = error
        self.active[run.first : run.first + run.count] = False
        self._compact()

    def _run_layer(self, layer: int) -> None:
        backbone = self.model.backbone
        tick = time.perf_counter()
        padded_flops = 0.0
        for i, b in enumerate(self.buckets):
            targets = [self.runs[int(self.job_of[r])].job.plan.width.get(layer) for r in b.rows.tolist()]
            merging = any(t is not None for t in targets)
            attention = backbone.anchor_attention(layer, b.state) if merging else None
            lengths = b.state.lengths.cpu()
            row_flops = self.ex.flops.layer_rows(lengths)
            padded_flops += self.ex.flops.layer(torch.full_like(lengths, b.state.hidden.shape[1]))
            state = backbone.forward_layer(layer, b.state)
            if attention is not None:
                merging_rows = torch.tensor([t is not None for t in targets])
                row_flops += self.ex.flops.merge_rows(lengths) * merging_rows
                state = merge_rows(state, attention, targets)
            self.buckets[i] = _Bucket(state, b.rows)
            self._charge(b.rows, lengths, row_flops)
        self.ex.latency.observe(padded_flops, time.perf_counter() - tick)

    def _charge(self, rows: Tensor, lengths: Tensor, row_flops: Tensor) -> None:
        jobs = self.job_of[rows]
        self.row_flops[rows] += row_flops
        for j in jobs.unique().tolist():
            sel = jobs == j
            usage = self.runs[j].usage
            usage.layer_tokens += int(lengths[sel].sum())
            usage.flops += float(row_flops[sel].sum())

    def _score_and_exit(self, layer: int) -> None:
        scorer = self.model.scorer
        scored_jobs: set[int] = set()
        for b in self.buckets:
            jobs = self.job_of[b.rows]
            wants = torch.tensor(
                [
                    self.runs[j].scores_at(layer, self.head_layers) and not self.ledger.has(r, layer)
                    for j, r in zip(jobs.tolist(), b.rows.tolist(), strict=True)
                ],
                dtype=torch.bool,
            )
            if not bool(wants.any()):
                continue
            state = b.state if bool(wants.all()) else b.state.select(wants.nonzero().flatten())
            logits = scorer.logits(state)
            probs = scorer.calibration.probability(layer, logits)
            rows = b.rows[wants]
            self.logit[rows] = logits.double().cpu()
            self.prob[rows] = probs.double().cpu()
            self.exit_layer[rows] = layer
            for j in jobs[wants].unique().tolist():
                run = self.runs[j]
                mine = rows[jobs[wants] == j]
                run.usage.flops += self.ex.flops.score(int(mine.numel()), run.query_tokens)
                self.row_flops[mine] += self.ex.flops.score(1, run.query_tokens)
                scored_jobs.add(j)
            for r in rows.tolist():
                self.history[r][layer] = ScoredLayer(float(self.logit[r]), float(self.row_flops[r]))
        scored_jobs |= self._replay(layer)
        for j in sorted(scored_jobs):
            self._decide(self.runs[j], layer)
        if self.on_stage is not None:
            for j in sorted(scored_jobs):
                self.on_stage(j, layer, self._outcomes(self.runs[j]))

    def _replay(self, layer: int) -> set[int]:
        """Give active rows with a cached score at `layer` that score, where their job scores."""
        rows = [
            r
            for r in self.ledger.rows_at(layer)
            if bool(self.active[r]) and self.runs[int(self.job_of[r])].scores_at(layer, self.head_layers)
        ]
        if not rows:
            return set()
        for r in rows:
            self.history[r][layer] = self.ledger.replay(r, layer)
        logits = torch.tensor([self.history[r][layer].logit for r in rows], dtype=torch.float64)
        probs = self.model.scorer.calibration.probability(layer, logits.to(self.model.backbone.device))
        index = torch.tensor(rows, dtype=torch.long)
        self.logit[index] = logits
        self.prob[index] = probs.double().cpu()
        self.exit_layer[index] = layer
        return {int(self.job_of[r]) for r in rows}

    def _decide(self, run: JobRun, layer: int) -> None:
        run.scored_once = True
        rows = torch.arange(run.first, run.first + run.count)
        active = self.active[rows]
        decisions = run.schedule.decide(layer, self.prob[rows], active)
        still = active & ~self.prob[rows].isnan()  # a row never scored has nothing to answer with
        for i in decisions:
            still[i] = False
        guard = run.schedule.budget
        if guard is not None and bool(still.any()):
            next_flops, next_all = self._next_step_flops(run, layer, rows[still])
            if guard.would_overrun(self.ex.latency.predict(next_all), next_flops, run.usage.flops):
                for i in still.nonzero().flatten().tolist():
                    decisions[i] = ExitReason.BUDGET
                run.partial = True
        for i, reason in decisions.items():
            row = run.first + i
            self.active[row] = False
            hit = self.ledger.hit(row, layer)
            if hit is not None and reason != ExitReason.BUDGET:
                reason = ExitReason.CACHE_HIT
                run.usage.cache_hits += 1
                run.usage.cached_flops += hit.flops
            elif run.job.keep_states and (state := self._row_state(row)) is not None:
                run.states[i] = state
                run.scores[i] = self.history[row]
            self.reason[row] = reason

    def _next_step_flops(self, run: JobRun, layer: int, rows: Tensor) -> tuple[float, float]:
        """FLOPs to bring `rows` (this job) and all active rows (the batch) to the job's next head."""
        upcoming = [h for h in self.head_layers if layer < h <= run.schedule.depth]
        steps = (upcoming[0] if upcoming else run.schedule.depth) - layer
        mine = 0.0
        everyone = 0.0
        own = set(rows.tolist())
        for b in self.buckets:
            lengths = b.state.lengths.cpu()
            per_row = self.ex.flops.layer_rows(lengths) * steps
            everyone += float(per_row[self.active[b.rows]].sum())
            sel = torch.tensor([r in own for r in b.rows.tolist()])
            mine += float(per_row[sel].sum())
        mine += self.ex.flops.score(len(own), run.query_tokens)
        return mine, everyone

    def _row_state(self, row: int) -> RowState | None:
        """The row's state, or None for a row that never joined a bucket (answered from the cache)."""
        for b in self.buckets:
            hit = (b.rows == row).nonzero().flatten()
            if hit.numel():
                return b.state.row(int(hit[0]))
        return None

    # -- results --------------------------------------------------------------------------------

    def _outcomes(self, run: JobRun) -> list[Outcome]:
        return [
            Outcome(
                index=i,
                logit=float(self.logit[row]),
                probability=float(self.prob[row]),
                exit_layer=int(self.exit_layer[row]),
                exit_reason=self.reason[row],
                tokens=self.tokens[row],
            )
            for i, row in enumerate(run.rows)
        ]

    def _result(self, run: JobRun) -> JobResult | EngineError:
        if run.error is not None:
            return run.error
        for row in run.rows:
            if row in self.ledger.resumed and self.reason[row] != ExitReason.CACHE_HIT:
                run.usage.cache_resumed += 1
                run.usage.cached_flops += self.ledger.resumed[row]
        return JobResult(
            outcomes=self._outcomes(run),
            usage=run.usage,
            partial=run.partial,
            states=run.states,
            compute_seconds=time.perf_counter() - run.started,
            scores=run.scores,
        )
