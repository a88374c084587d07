"""Admission by work: a bound on requests and on tokens in flight (which bounds the memory their layer
states take), and a retry delay computed from the work already admitted."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from matryoshka.engine.cost import LatencyModel


class QueueFullError(Exception):
    """Too much work is waiting or running; retry after `retry_after` seconds."""

    def __init__(self, num_unfinished: int, retry_after: float, reason: str = "too many requests") -> None:
        self.num_unfinished = num_unfinished
        self.retry_after = retry_after
        super().__init__(f"the server is at capacity ({reason}); retry after {retry_after:.2g}s")


@dataclass(frozen=True)
class Work:
    """What one job brings: input tokens (its rows' states) and the FLOPs of its run at its depth."""

    tokens: int
    flops: float


class Admission:
    """Counts admitted jobs, tokens and FLOPs; thread-safe. A job larger than `max_tokens` on its own is
    admitted only into an empty engine (the request limits bound it), never refused forever."""

    def __init__(
        self, max_jobs: int, max_tokens: int | None, latency: LatencyModel, min_retry_after: float = 1.0
    ) -> None:
        self.max_jobs = max_jobs
        self.max_tokens = max_tokens
        self.latency = latency
        self.min_retry_after = min_retry_after
        self._lock = threading.Lock()
        self.num_jobs = 0
        self.num_tokens = 0
        self.flops = 0.0

    def admit(self, work: Work) -> None:
        """Count `work` in, or raise QueueFullError with a delay from the work ahead of it."""
        with self._lock:
            if self.num_jobs >= self.max_jobs:
                share = 1.0 / max(self.num_jobs, 1)  # the first of them to finish frees a slot
                raise QueueFullError(self.num_jobs, self._retry(share), f"{self.num_jobs} requests")
            excess = self.num_tokens + work.tokens - (self.max_tokens or 0)
            if self.max_tokens is not None and self.num_jobs and excess > 0:
                share = min(excess / max(self.num_tokens, 1), 1.0)
                reason = f"{self.num_tokens} tokens in flight, {work.tokens} asked, at most {self.max_tokens}"
                raise QueueFullError(self.num_jobs, self._retry(share), reason)
            self.num_jobs += 1
            self.num_tokens += work.tokens
            self.flops += work.flops

    def release(self, work: Work) -> None:
        """Count a finished, failed or cancelled job out."""
        with self._lock:
            self.num_jobs -= 1
            self.num_tokens -= work.tokens
            self.flops -= work.flops

    def _retry(self, share: float) -> float:
        """Predicted seconds until `share` of the admitted work is done (at least the minimum)."""
        return max(self.min_retry_after, self.latency.predict(self.flops) * share)
