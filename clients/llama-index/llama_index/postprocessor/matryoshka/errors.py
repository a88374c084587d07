"""What a failed re-ranking call raises, and which failures are worth another try.

The client's RerankError carries the gRPC status code; here it becomes an exception that names the case
(bad configuration, server unavailable, deadline) and is catchable as the matching built-in
(ValueError, ConnectionError, TimeoutError).
"""

from __future__ import annotations

import grpc
from matryoshka_client import RerankError

TRANSIENT_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})
"""Codes a call is retried on: the server is starting, restarting or its queue is full."""

MAX_RETRY_DELAY = 5.0
"""Longest wait between two attempts, in seconds (a server's RetryInfo included)."""

_CONFIGURATION_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)


class MatryoshkaRerankError(Exception):
    """A re-ranking call failed; `code` is its grpc.StatusCode (the client's RerankError is the cause)."""

    def __init__(self, message: str, code: grpc.StatusCode) -> None:
        super().__init__(message)
        self.code = code


class MatryoshkaConfigurationError(MatryoshkaRerankError, ValueError):
    """The server rejected the request as configured: a bad option value, an unknown model, bad auth."""


class MatryoshkaUnavailableError(MatryoshkaRerankError, ConnectionError):
    """The server could not be reached or stayed overloaded through every retry."""


class MatryoshkaDeadlineError(MatryoshkaRerankError, TimeoutError):
    """The call's gRPC deadline (`timeout`) passed before the server had anything to return."""


def retry_delay(error: RerankError, attempt: int, max_retries: int, backoff: float) -> float | None:
    """Seconds to wait before trying again after failed attempt `attempt` (1-based), or None when the
    error is not transient or the retries are spent. A server's RetryInfo wins over the exponential
    backoff; both are capped at MAX_RETRY_DELAY."""
    if error.code not in TRANSIENT_CODES or attempt > max_retries:
        return None
    delay = error.retry_delay if error.retry_delay is not None else backoff * 2 ** (attempt - 1)
    return min(delay, MAX_RETRY_DELAY)


def describe_failure(error: RerankError, target: str, attempts: int, timeout: float | None) -> Exception:
    """The exception to raise for a call to `target` that failed with `error` after `attempts` tries."""
    code = error.code
    if code in _CONFIGURATION_CODES:
        return MatryoshkaConfigurationError(
            f"matryoshka-rerank server at {target} rejected the request's configuration: {error}", code
        )
    if code in TRANSIENT_CODES:
        what = "is overloaded" if code == grpc.StatusCode.RESOURCE_EXHAUSTED else "is unavailable"
        return MatryoshkaUnavailableError(
            f"matryoshka-rerank server at {target} {what} (gave up after {attempts} attempt"
            f"{'s' if attempts > 1 else ''}): {error}",
            code,
        )
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return MatryoshkaDeadlineError(
            f"matryoshka-rerank call to {target} passed its {timeout}s deadline: {error}. Set a `budget` "
            "below the timeout to get a partial ranking instead of this error",
            code,
        )
    return MatryoshkaRerankError(f"matryoshka-rerank call to {target} failed: {error}", code)
