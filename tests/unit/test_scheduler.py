"""The scheduler: bounded queue, jobs batched together, errors delivered to the right caller."""

from __future__ import annotations

import threading

import pytest

from matryoshka.engine.executor import Executor
from matryoshka.engine.job import Job, JobResult, RequestCancelledError
from matryoshka.engine.plan import Plan
from matryoshka.engine.scheduler import QueueFullError, Scheduler
from matryoshka.model.matryoshka_model import MatryoshkaModel
from tests.conftest import PASSAGES


class GatedExecutor(Executor):
    """Blocks its first run until released, so the test controls what is queued meanwhile."""

    def __init__(self, model: MatryoshkaModel) -> None:
        super().__init__(model)
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.batches: list[int] = []

    def run(self, jobs, on_stage=None):  # type: ignore[no-untyped-def]
        self.entered.set()
        self.gate.wait(30)
        self.batches.append(len(jobs))
        return super().run(jobs, on_stage)


def test_full_queue_refuses_and_waiting_jobs_share_a_batch(llama_model: MatryoshkaModel) -> None:
    executor = GatedExecutor(llama_model)
    scheduler = Scheduler(executor, max_queue=3, retry_after=2.5)
    plan = Plan().resolve(llama_model.info)
    try:
        futures = [scheduler.submit(Job("the cat", PASSAGES, plan))]
        assert executor.entered.wait(30)  # the first job is running (and held)
        futures += [scheduler.submit(Job("the dog", PASSAGES, plan)) for _ in range(2)]
        assert scheduler.num_unfinished == 3
        with pytest.raises(QueueFullError) as err:
            scheduler.submit(Job("the cat", PASSAGES, plan))
        assert err.value.retry_after == 2.5
        executor.gate.set()
        results = [f.result(30) for f in futures]
    finally:
        scheduler.close()
    assert all(isinstance(r, JobResult) and len(r.outcomes) == len(PASSAGES) for r in results)
    assert executor.batches[0] == 1  # the first job was already running when the others arrived
    assert executor.batches[1:] == [2]  # the two that waited ran together
    assert scheduler.num_unfinished == 0


def test_engine_errors_reach_their_own_caller(llama_model: MatryoshkaModel) -> None:
    scheduler = Scheduler(Executor(llama_model))
    plan = Plan().resolve(llama_model.info)
    try:
        doomed = scheduler.submit(Job("the cat", PASSAGES, plan, cancelled=lambda: True))
        fine = scheduler.submit(Job("the dog", PASSAGES, plan))
        with pytest.raises(RequestCancelledError):
            doomed.result(30)
        assert isinstance(fine.result(30), JobResult)
    finally:
        scheduler.close()
