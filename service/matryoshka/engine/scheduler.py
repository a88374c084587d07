"""Continuous batching: one engine thread advances every running job a layer step at a time.

`submit` tokenises the job, admits it by work (engine/admission.py) or refuses at once, and hands it
to the engine thread. Between steps that thread takes in new jobs (they start at layer 0 while older
ones are deeper) and answers each job the moment its last row exits, while the others keep running.
Which rows a step advances is engine/policy.py's choice (earliest effective deadline first).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from matryoshka.engine.admission import Admission, QueueFullError, Work
from matryoshka.engine.executor import Executor
from matryoshka.engine.job import EngineError, Job, JobResult
from matryoshka.engine.jobrun import JobRun, StageListener
from matryoshka.model.prompt import EncodedPair

__all__ = ["BatchListener", "BatchStats", "QueueFullError", "Scheduler", "StageListener"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchStats:
    """One engine step as it starts: the jobs and documents it runs, and how long each job that joins
    the running set at this step waited for it."""

    num_jobs: int
    num_documents: int
    queue_waits: list[float]  # seconds, one per job that joined at this step


BatchListener = Callable[[BatchStats], None]  # the owner's gauges; the engine imports no metrics library


@dataclass
class _Ticket:
    job: Job
    work: Work
    pairs: list[EncodedPair]  # tokenised at submit
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
        max_inflight_tokens: int | None = None,
        retry_after: float = 1.0,
        on_batch: BatchListener | None = None,
    ) -> None:
        self.executor = executor
        self.on_batch = on_batch
        self.admission = Admission(max_queue, max_inflight_tokens, executor.latency, retry_after)
        self._inbox: queue.Queue[_Ticket | None] = queue.Queue()
        self._running: list[tuple[_Ticket, JobRun]] = []
        self._joined_waits: list[float] = []  # queue waits of the jobs started since the last step
        self._thread = threading.Thread(target=self._work, name="matryoshka-engine", daemon=True)
        self._thread.start()

    @property
    def num_unfinished(self) -> int:
        """Jobs admitted and not yet answered."""
        return self.admission.num_jobs

    @property
    def num_inflight_tokens(self) -> int:
        """Input tokens of the jobs admitted and not yet answered."""
        return self.admission.num_tokens

    def submit(self, job: Job, on_stage: StageListener | None = None) -> Future[JobResult]:
        """Admit a job; its future resolves to a JobResult or raises the job's EngineError.
        Raises QueueFullError when the work in flight is at its limits."""
        pairs = self.executor.encode(job)
        depth = job.plan.depth or self.executor.model.backbone.num_layers
        lengths = torch.tensor([len(p.input_ids) for p in pairs], dtype=torch.long)
        work = Work(int(lengths.sum()), self.executor.flops.layer(lengths) * depth)
        self.admission.admit(work)
        future: Future[JobResult] = Future()
        future.add_done_callback(lambda _: self.admission.release(work))  # cancelled while queued: at once
        self._inbox.put(_Ticket(job, work, pairs, future, on_stage))
        return future

    def close(self) -> None:
        """Finish the admitted work, then stop the engine thread."""
        self._inbox.put(None)
        self._thread.join()

    def _take_new(self, block: bool) -> bool:
        """Start the jobs that arrived since the last step; True once close() was called."""
        stopping = False
        while True:
            try:
                ticket = self._inbox.get(block=block and not stopping)
            except queue.Empty:
                return stopping
            block = False
            if ticket is None:
                stopping = True
                continue
            if ticket.future.set_running_or_notify_cancel():
                self._joined_waits.append(time.monotonic() - ticket.submitted)
                run = self.executor.start(ticket.job, ticket.pairs, ticket.on_stage)
                self._running.append((ticket, run))

    def _work(self) -> None:
        stopping = False
        with torch.inference_mode():
            while True:
                stopping = self._take_new(block=not self._running and not stopping) or stopping
                if not self._running:
                    if stopping:
                        return
                    continue
                self._report_step()
                try:
                    self.executor.step([run for _, run in self._running])
                except Exception as exc:  # a bug in the loop itself: fail what ran, keep the thread
                    log.exception("engine step failed")
                    for _, run in self._running:
                        if not run.done:
                            run.fail(EngineError(f"internal engine error: {type(exc).__name__}"))
                self._answer_finished()

    def _report_step(self) -> None:
        """Tell the owner's hook what this step runs and how long the jobs joining it waited."""
        if self.on_batch is not None:
            documents = sum(len(ticket.job.documents) for ticket, _ in self._running)
            self.on_batch(BatchStats(len(self._running), documents, self._joined_waits))
        self._joined_waits = []

    def _answer_finished(self) -> None:
        still: list[tuple[_Ticket, JobRun]] = []
        for ticket, run in self._running:
            if not run.done:
                still.append((ticket, run))
                continue
            answer = run.result()
            if isinstance(answer, EngineError):
                ticket.future.set_exception(answer)
            else:
                ticket.future.set_result(answer)
        self._running = still
