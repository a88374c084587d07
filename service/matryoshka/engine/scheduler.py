"""Cross-request batching: one worker thread takes every waiting job and runs them together.

Requests that arrive while a batch runs wait and form the next batch, so under load many requests
share each layer's matrix multiplications. The queue is bounded: past `max_queue` waiting or running
jobs, `submit` refuses at once (QueueFullError) instead of letting latency grow without bound.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from matryoshka.engine.executor import Executor
from matryoshka.engine.job import EngineError, Job, JobResult, Outcome

StageListener = Callable[[int, list[Outcome]], None]  # (layer, outcomes so far)


@dataclass(frozen=True)
class BatchStats:
    """One batch as it starts: how many jobs and documents, and how long each job waited for it."""

    num_jobs: int
    num_documents: int
    queue_waits: list[float]  # seconds, one per job


BatchListener = Callable[[BatchStats], None]  # the owner's gauges; the engine imports no metrics library


class QueueFullError(Exception):
    """Too many requests are waiting or running; retry after `retry_after` seconds."""

    def __init__(self, num_unfinished: int, retry_after: float) -> None:
        self.num_unfinished = num_unfinished
        self.retry_after = retry_after
        super().__init__(f"the queue is full ({num_unfinished} requests); retry after {retry_after:g}s")


@dataclass
class _Ticket:
    job: Job
    future: Future[JobResult]
    on_stage: StageListener | None
    submitted: float = field(default_factory=time.monotonic)


class Scheduler:
    """Owns the executor's thread; `submit` is safe from any thread."""

    def __init__(
        self,
        executor: Executor,
        *,
        max_queue: int = 64,
        max_batch_jobs: int = 32,
        retry_after: float = 1.0,
        on_batch: BatchListener | None = None,
    ) -> None:
        self.executor = executor
        self.on_batch = on_batch
        self.max_queue = max_queue
        self.max_batch_jobs = max_batch_jobs
        self.retry_after = retry_after
        self._queue: queue.Queue[_Ticket | None] = queue.Queue()
        self._lock = threading.Lock()
        self._num_unfinished = 0
        self._thread = threading.Thread(target=self._work, name="matryoshka-engine", daemon=True)
        self._thread.start()

    @property
    def num_unfinished(self) -> int:
        """Jobs waiting or running."""
        return self._num_unfinished

    def submit(self, job: Job, on_stage: StageListener | None = None) -> Future[JobResult]:
        """Queue a job; its future resolves to a JobResult or raises the job's EngineError."""
        with self._lock:
            if self._num_unfinished >= self.max_queue:
                raise QueueFullError(self._num_unfinished, self.retry_after)
            self._num_unfinished += 1
        future: Future[JobResult] = Future()
        self._queue.put(_Ticket(job, future, on_stage))
        return future

    def close(self) -> None:
        """Finish queued work, then stop the worker thread."""
        self._queue.put(None)
        self._thread.join()

    def _take_batch(self, first: _Ticket) -> tuple[list[_Ticket], bool]:
        batch = [first]
        while len(batch) < self.max_batch_jobs:
            try:
                nxt = self._queue.get_nowait()
            except queue.Empty:
                break
            if nxt is None:
                return batch, True
            batch.append(nxt)
        return batch, False

    def _work(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, stop = self._take_batch(first)
            self._run(batch)
            if stop:
                return

    def _run(self, batch: list[_Ticket]) -> None:
        live = [t for t in batch if t.future.set_running_or_notify_cancel()]
        if self.on_batch is not None and live:
            now = time.monotonic()
            documents = sum(len(t.job.documents) for t in live)
            self.on_batch(BatchStats(len(live), documents, [now - t.submitted for t in live]))

        def on_stage(index: int, layer: int, outcomes: list[Outcome]) -> None:
            listener = live[index].on_stage
            if listener is not None:
                listener(layer, outcomes)

        try:
            answers = self.executor.run([t.job for t in live], on_stage) if live else []
            for ticket, answer in zip(live, answers, strict=True):
                if isinstance(answer, EngineError):
                    ticket.future.set_exception(answer)
                else:
                    ticket.future.set_result(answer)
        except BaseException as exc:  # a bug must fail these requests, not kill the worker
            for ticket in live:
                if not ticket.future.done():
                    ticket.future.set_exception(exc)
        finally:
            with self._lock:
                self._num_unfinished -= len(batch)
