"""The scheduler: continuous batching (jobs join between steps and answer alone), admission by work,
budgets from arrival, failures that stay with their own job."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future

import pytest

from matryoshka.engine.executor import Executor
from matryoshka.engine.exits import ExitReason
from matryoshka.engine.job import Job, JobFailedError, JobResult, RequestCancelledError
from matryoshka.engine.jobrun import Bucket, JobRun
from matryoshka.engine.plan import Budget, Plan
from matryoshka.engine.scheduler import QueueFullError, Scheduler
from matryoshka.model.matryoshka_model import MatryoshkaModel
from tests.conftest import PASSAGES, tiny_llama
from tests.faults import POISON, slow_and_poisoned

STEP = 0.01  # seconds per row per layer step of the slowed model


class RecordingExecutor(Executor):
    """Records which jobs (by query) each step advanced; can hold the engine before it starts a job."""

    def __init__(self, model: MatryoshkaModel, **kwargs: object) -> None:
        super().__init__(model, **kwargs)  # type: ignore[arg-type]
        self.gate = threading.Event()
        self.gate.set()
        self.steps: list[set[str]] = []

    def start(self, job, pairs=None, listener=None):  # type: ignore[no-untyped-def]
        self.gate.wait(30)  # jobs submitted meanwhile wait in the inbox and start together
        return super().start(job, pairs, listener)

    def step(self, runs):  # type: ignore[no-untyped-def]
        self.steps.append(set())
        return super().step(runs)

    def _advance(self, run: JobRun, bucket: Bucket) -> None:
        self.steps[-1].add(run.job.query)
        super()._advance(run, bucket)


@pytest.fixture
def slow_model(tiny_tokenizer) -> MatryoshkaModel:  # type: ignore[no-untyped-def]
    """A tiny 8-layer Llama whose layer steps take STEP seconds per row."""
    return slow_and_poisoned(MatryoshkaModel.from_hf("slow", tiny_llama(layers=8), tiny_tokenizer), STEP)


def wait_for(predicate, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_a_short_job_answers_while_a_long_one_keeps_running(slow_model: MatryoshkaModel) -> None:
    executor = RecordingExecutor(slow_model, max_step_tokens=64)
    scheduler = Scheduler(executor)
    info = slow_model.info
    try:
        long = scheduler.submit(Job("the cat", PASSAGES * 4, Plan().resolve(info)))
        wait_for(lambda: len(executor.steps) >= 3)  # the long job is a few layers in
        short = scheduler.submit(Job("the dog", PASSAGES[:1], Plan(depth=2).resolve(info)))
        result = short.result(30)
        assert not long.done()  # answered while the long job is still running
        assert isinstance(result, JobResult)
        assert [o.exit_layer for o in result.outcomes] == [2]
        assert result.queue_seconds < 20 * STEP * len(PASSAGES) * 4  # waited at most about one step
        assert len(long.result(60).outcomes) == len(PASSAGES) * 4
    finally:
        scheduler.close()
    joined = [i for i, s in enumerate(executor.steps) if "the dog" in s]
    assert joined
    assert "the cat" in executor.steps[joined[0]]  # the short job's first step was shared


def test_a_budgeted_job_under_load_answers_within_its_budget(slow_model: MatryoshkaModel) -> None:
    executor = Executor(slow_model, max_step_tokens=64)
    info = slow_model.info
    executor.run([Job("warm up", PASSAGES[:2], Plan().resolve(info))])  # calibrates the latency model
    scheduler = Scheduler(executor)
    try:
        busy = scheduler.submit(Job("the cat", PASSAGES * 4, Plan().resolve(info)))
        time.sleep(0.1)
        budget = 0.25
        sent = time.monotonic()
        budgeted = scheduler.submit(Job("the dog", PASSAGES * 2, Plan(budget=Budget(budget)).resolve(info)))
        result = budgeted.result(30)
        took = time.monotonic() - sent
        assert not busy.done()
    finally:
        scheduler.close()
    one_step = 64 / 4 * STEP * 2  # a step of at most 64 tokens (rows of >= 4 tokens), generously
    assert took <= budget + one_step
    assert result.partial
    assert all(o.exit_reason is ExitReason.BUDGET for o in result.outcomes)


def test_the_budget_counts_from_arrival(llama_model: MatryoshkaModel) -> None:
    scheduler = Scheduler(Executor(llama_model))
    plan = Plan(budget=Budget(max_seconds=5.0)).resolve(llama_model.info)
    try:
        late = scheduler.submit(Job("the cat", PASSAGES, plan, arrived=time.monotonic() - 10))
        result = late.result(30)
    finally:
        scheduler.close()
    assert result.partial
    assert {o.exit_layer for o in result.outcomes} == {0}  # no time left for any layer: input order
    assert result.queue_seconds >= 10


def test_a_job_that_raises_fails_alone_in_a_shared_step(slow_model: MatryoshkaModel) -> None:
    executor = RecordingExecutor(slow_model)
    executor.gate.clear()
    scheduler = Scheduler(executor)
    plan = Plan().resolve(slow_model.info)
    try:
        doomed = scheduler.submit(Job("the cat", [*PASSAGES, f"the {POISON} water"], plan))
        fine = scheduler.submit(Job("the dog", PASSAGES, plan))
        cancelled = scheduler.submit(Job("blue sky", PASSAGES, plan, cancelled=lambda: True))
        executor.gate.set()
        with pytest.raises(JobFailedError, match="poisoned row"):
            doomed.result(30)
        with pytest.raises(RequestCancelledError):
            cancelled.result(30)
        assert len(fine.result(30).outcomes) == len(PASSAGES)
    finally:
        scheduler.close()
    first = next(s for s in executor.steps if s)
    assert {"the cat", "the dog"} <= first  # they shared the step in which one of them failed
    assert scheduler.num_unfinished == 0


def test_admission_by_work_refuses_with_a_delay_and_frees_slots_at_once(slow_model: MatryoshkaModel) -> None:
    executor = RecordingExecutor(slow_model)
    executor.gate.clear()  # nothing runs until the test says so
    plan = Plan().resolve(slow_model.info)
    big = Job("the cat", PASSAGES * 20, plan)
    tokens = sum(len(p.input_ids) for p in executor.encode(big))
    scheduler = Scheduler(executor, max_queue=3, max_inflight_tokens=tokens // 2, retry_after=0.5)
    try:
        first: Future[JobResult] = scheduler.submit(big)  # larger than the bound, but the engine is empty
        with pytest.raises(QueueFullError) as err:
            scheduler.submit(Job("the dog", PASSAGES, plan))
        assert err.value.retry_after >= 0.5
        assert "tokens" in str(err.value)
        assert scheduler.num_inflight_tokens == tokens
        assert first.cancel() or first.running()
        executor.gate.set()
        wait_for(lambda: scheduler.num_unfinished == 0)
        small = [scheduler.submit(Job("the dog", PASSAGES[:1], plan)) for _ in range(3)]
        with pytest.raises(QueueFullError, match="3 requests"):
            scheduler.submit(Job("the dog", PASSAGES[:1], plan))
        assert all(isinstance(f.result(30), JobResult) for f in small)
    finally:
        scheduler.close()
    assert scheduler.num_unfinished == 0
    assert scheduler.num_inflight_tokens == 0
