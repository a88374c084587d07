"""The executor: advances jobs' (query, passage) rows layer by layer, one engine step at a time.

A step runs one layer on the most urgent frontier buckets (engine/policy.py), merges width where a
job's plan says so, and when a job's rows have all reached a layer it scores them there (at head
layers), lets the job's exit schedule decide, and drops exited rows so later layers compute less.
Jobs join between steps and leave the moment their last row exits, so a step may hold jobs at
different layers. Before each step every job is checked for cancellation and for whether its next
head still fits its budget; a job that does not fit answers at once with what it has (BUDGET).
Rows with cached scores (the layer-state cache) get them replayed to the exit schedule instead of
being scored, so an exit on one is a CACHE_HIT; a row cached at the depth with no state to resume
never runs at all. Rows resumed from a cached state join when their job reaches their layer.
An exception while running one job's rows fails that job alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import torch

from matryoshka.engine import policy
from matryoshka.engine.cost import FlopCounter, LatencyModel
from matryoshka.engine.exits import ExitReason
from matryoshka.engine.fusion import check_first_stage
from matryoshka.engine.job import EngineError, Job, JobFailedError, JobResult, Outcome, RequestCancelledError
from matryoshka.engine.jobrun import Bucket, JobRun, Limits, StageListener
from matryoshka.model.matryoshka_model import MatryoshkaModel
from matryoshka.model.prompt import EncodedPair
from matryoshka.model.state import Segment
from matryoshka.model.width import merge_rows

log = logging.getLogger(__name__)

StageCallback = Callable[[int, int, list[Outcome]], None]  # (job index, layer, outcomes so far)


class Executor:
    """Runs jobs on one model; holds the latency model that budget predictions use."""

    def __init__(
        self,
        model: MatryoshkaModel,
        *,
        max_batch_rows: int = 64,
        max_batch_tokens: int = 16384,
        latency: LatencyModel | None = None,
        max_step_tokens: int | None = None,
    ) -> None:
        self.model = model
        self.flops = FlopCounter(model.backbone, model.scorer)
        self.max_batch_rows = max_batch_rows
        self.max_batch_tokens = max_batch_tokens
        self.max_step_tokens = max_step_tokens  # None: every frontier bucket in each step
        self.latency = latency or LatencyModel()
        self.head_layers = model.scorer.head_layers

    @property
    def limits(self) -> Limits:
        """Bucket size: at most `max_batch_rows` rows and the smaller of the batch and step tokens."""
        tokens = min(self.max_batch_tokens, self.max_step_tokens or self.max_batch_tokens)
        return Limits(self.max_batch_rows, tokens)

    def encode(self, job: Job) -> list[EncodedPair]:
        """Tokenise a job's pairs (done once; admission counts these tokens): the job's own when the
        cache already tokenised them; a chunked job's windows are set on it with them."""
        if job.pairs is not None:
            return list(job.pairs)
        if job.chunking is not None:
            pairs, job.windows = self.model.encode_windows(
                job.query, list(job.documents), job.truncation, job.chunking
            )
            return pairs
        return self.model.encode(job.query, list(job.documents), job.truncation)

    def run(
        self, jobs: Sequence[Job], on_stage: StageCallback | None = None
    ) -> list[JobResult | EngineError]:
        """Run jobs to completion together; each gets a JobResult, or the EngineError that ended it."""
        with torch.inference_mode():
            runs = [self.start(job, listener=_indexed(on_stage, i)) for i, job in enumerate(jobs)]
            while not all(r.done for r in runs):
                if not self.step(runs) and not all(r.done for r in runs):
                    raise RuntimeError("the engine made no progress on unfinished jobs")
        return [r.result() for r in runs]

    # -- admission ------------------------------------------------------------------------------

    def start(
        self, job: Job, pairs: list[EncodedPair] | None = None, listener: StageListener | None = None
    ) -> JobRun:
        """Embed a job's fresh rows (resumed rows wait for their layer); a job that cannot start fails."""
        try:
            return self._start(job, self.encode(job) if pairs is None else pairs, listener)
        except Exception as exc:
            log.exception("job failed to start")
            run = JobRun(job, [], 0, listener)
            run.fail(JobFailedError(f"the job could not start: {type(exc).__name__}: {exc}"))
            return run

    def _start(self, job: Job, pairs: list[EncodedPair], listener: StageListener | None) -> JobRun:
        depth = job.plan.depth
        if depth is None:
            raise ValueError("jobs need resolved plans (Plan.resolve)")
        problem = check_first_stage(job.first_stage, len(job.documents))  # one per document, not per window
        if problem is not None:
            raise ValueError(f"first-stage scores: {problem}")
        query_tokens = sum(s == Segment.QUERY for s in pairs[0].segments) if pairs else 0
        run = JobRun(job, [len(p.input_ids) for p in pairs], query_tokens, listener)
        run.fusion = self.model.fusion
        lengths = torch.tensor(run.tokens, dtype=torch.long)
        run.usage.full_flops = self.flops.full(lengths, query_tokens)
        run.exit_by_first_stage()
        fresh: list[int] = []
        for index in range(len(pairs)):
            if not run.active[index]:
                continue
            cached = job.resume.get(index)
            if index in job.cached_scores:
                run.ledger.add(index, job.cached_scores[index])
            if cached is None and run.ledger.has(index, depth):
                run.pending.setdefault(depth, []).append((index, None))  # answered from its scores
            elif cached is None:
                fresh.append(index)
            elif cached.layer > depth:
                raise ValueError(f"document {index}: cached state at layer {cached.layer} is past the depth")
            else:
                run.pending.setdefault(cached.layer, []).append((index, cached))
        order = sorted(fresh, key=lambda r: -run.tokens[r])
        for chunk in self.limits.chunks(order, lambda r: run.tokens[r]):
            state = self.model.embed([pairs[r] for r in chunk])
            run.buckets.append(Bucket(state, torch.tensor(chunk, dtype=torch.long)))
        own = self.flops.layer(lengths) * depth
        run.priority = policy.priority(run, self.latency.predict(own))
        self._arrive(run)
        return run

    # -- one step -------------------------------------------------------------------------------

    def step(self, runs: Sequence[JobRun]) -> int:
        """Check interrupts and budgets, then run one layer on the chosen buckets; returns how many."""
        live = [r for r in runs if not r.done]
        for run in live:
            self._check_cancelled(run)
        chosen = policy.select(live, self.max_step_tokens)
        step_flops = sum(self.flops.layer(b.state.lengths.cpu()) for _, b in chosen)
        in_step = {id(r) for r, _ in chosen}
        for run in live:
            if run.done or run.schedule.budget is None:
                continue
            wait = 0.0 if id(run) in in_step else self.latency.predict(step_flops)  # it sits this one out
            try:
                if not self._next_head_fits(run, step_flops, wait):
                    self._stop_for_budget(run)
            except Exception as exc:
                log.exception("a job's budget check failed")
                run.fail(JobFailedError(f"the budget check failed: {type(exc).__name__}: {exc}"))
        chosen = [(r, b) for r, b in chosen if not r.done]
        tick = time.monotonic()
        stepped: dict[int, JobRun] = {}
        for run, bucket in chosen:
            if run.done:
                continue
            stepped[id(run)] = run
            if run.first_step is None:
                run.first_step = tick
            try:
                self._advance(run, bucket)
            except Exception as exc:
                log.exception("a job's rows failed at layer %d", bucket.layer + 1)
                run.fail(JobFailedError(f"layer {bucket.layer + 1} failed: {type(exc).__name__}: {exc}"))
        for run in stepped.values():
            if not run.done and run.at_one_layer:
                self._arrive(run)
        took = time.monotonic() - tick
        for run in stepped.values():
            run.compute_seconds += took
        return len(chosen)

    def _check_cancelled(self, run: JobRun) -> None:
        try:
            cancelled = run.job.cancelled is not None and run.job.cancelled()
        except Exception as exc:
            run.fail(JobFailedError(f"the cancellation check raised {type(exc).__name__}: {exc}"))
            return
        if cancelled:
            run.fail(RequestCancelledError(f"cancelled before layer {run.layer + 1}"))

    def _next_head_fits(self, run: JobRun, step_flops: float, wait: float = 0.0) -> bool:
        """Whether this job can reach its next scored layer within its budget, after `wait` seconds,
        at the pace of steps as large as this one (the batch it runs in)."""
        guard = run.schedule.budget
        assert guard is not None
        depth = run.schedule.depth
        target = next((h for h in self.head_layers if run.layer < h < depth), depth)
        steps = target - run.layer
        own = run.layer_flops(self.flops.layer_rows)
        seconds = wait + steps * self.latency.predict(max(own, step_flops))
        flops = steps * own + self.flops.score(int(run.active.sum()), run.query_tokens)
        return not guard.would_overrun(seconds, flops, run.usage.flops)

    def _advance(self, run: JobRun, bucket: Bucket) -> None:
        """Run one layer on one bucket (merging width after it if the job's plan says so)."""
        layer = bucket.layer + 1
        backbone = self.model.backbone
        tick = time.perf_counter()
        target = run.job.plan.width.get(layer)
        uniform = self.model.uniform_width  # a trained compressor's windows need no attention
        merging = target is not None
        attention = backbone.anchor_attention(layer, bucket.state) if merging and not uniform else None
        lengths = bucket.state.lengths.cpu()
        row_flops = self.flops.layer_rows(lengths).double()
        state = backbone.forward_layer(layer, bucket.state)
        if merging:
            row_flops += self.flops.merge_rows(lengths).double()
            state = merge_rows(state, attention, [target] * state.batch_size, uniform=uniform)
        index = next(i for i, b in enumerate(run.buckets) if b is bucket)
        run.buckets[index] = Bucket(state, bucket.rows)
        run.usage.layer_tokens += int(lengths.sum())
        run.usage.flops += float(row_flops.sum())
        run.row_flops[bucket.rows] += row_flops
        padded = self.flops.layer(torch.full_like(lengths, bucket.state.hidden.shape[1]))
        self.latency.observe(padded, time.perf_counter() - tick)

    # -- arriving at a layer --------------------------------------------------------------------

    def _arrive(self, run: JobRun) -> None:
        """All the job's rows are at one layer: resumed rows join, score if due, exits leave."""
        try:
            scored = -1
            while not run.done:
                layer = run.layer
                if not run.buckets:  # no row ran up to here: cached scores below still decide
                    self._replay_below(run, layer)
                    if run.done:
                        return
                if layer in run.pending:
                    run.join(layer, self.limits, self.model.backbone.device, self.model.backbone.dtype)
                if layer != scored and run.scores_at(layer, self.head_layers):
                    scored = layer
                    self._score_and_decide(run, layer)
                run.compact(self.limits)
                if run.buckets or not run.pending:
                    return
        except Exception as exc:
            log.exception("scoring a job failed")
            run.fail(JobFailedError(f"scoring failed: {type(exc).__name__}: {exc}"))

    def _stop_for_budget(self, run: JobRun) -> None:
        """Answer the job now (BUDGET); rows never scored that wait with cached scores answer with
        their deepest one first: at the depth that is a complete answer (CACHE_HIT), below it a
        partial one, either way better than no score."""
        depth = run.schedule.depth
        waiting = [r for r in run.replayable_any() if bool(torch.isnan(run.prob[r]))]
        for r in waiting:
            layer = max(run.ledger.scores[r])
            logit = torch.tensor([run.ledger.scores[r][layer].logit], dtype=torch.float64)
            device = self.model.backbone.device
            run.replayed([r], layer, self.model.scorer.calibration.calibrated_logits(layer, logit.to(device)))
            if layer == depth:
                run.exit({r: ExitReason.DEPTH}, layer)
        if not run.done:  # (rows all answered from the cache: complete, not partial)
            run.stop_for_budget()

    def _replay_below(self, run: JobRun, layer: int) -> None:
        """Replay cached scores at the head layers below `layer` the job skipped while only resumed
        rows were left (a fresh run would have scored there, so its exit policy must see them)."""
        for head in self.head_layers:
            if run.scored_through < head < layer and run.scores_at(head, self.head_layers):
                if run.replayable(head):
                    self._score_and_decide(run, head)
                if run.done:
                    return

    def _score_and_decide(self, run: JobRun, layer: int) -> None:
        """Score the job's rows at `layer` (replaying cached scores where it has them) and decide."""
        scorer = self.model.scorer
        for b in run.buckets:
            wants = torch.tensor([not run.ledger.has(r, layer) for r in b.rows.tolist()], dtype=torch.bool)
            if not bool(wants.any()):
                continue
            picked = wants.nonzero().flatten().to(b.state.hidden.device)
            state = b.state if bool(wants.all()) else b.state.select(picked)
            rows = b.rows[wants]
            logits = scorer.logits(state)
            calibrated = scorer.calibration.calibrated_logits(layer, logits)
            run.usage.flops += self.flops.score(state.batch_size, run.query_tokens)
            run.scored(rows, layer, logits, calibrated, self.flops.score(1, run.query_tokens))
        cached = run.replayable(layer)
        if cached:
            logits = torch.tensor([run.ledger.scores[r][layer].logit for r in cached], dtype=torch.float64)
            device = self.model.backbone.device
            run.replayed(cached, layer, scorer.calibration.calibrated_logits(layer, logits.to(device)))
        run.scored_through = layer
        run.exit(run.decide(layer), layer)
        if run.schedule.budget is not None and not run.done and not self._next_head_fits(run, 0.0):
            self._stop_for_budget(run)
        if run.listener is not None:
            run.listener(layer, run.outcomes())


def _indexed(on_stage: StageCallback | None, index: int) -> StageListener | None:
    if on_stage is None:
        return None
    return lambda layer, outcomes: on_stage(index, layer, outcomes)
