"""Every error -> gRPC status, in one place. Rich details follow google.rpc (BadRequest, RetryInfo)."""

from __future__ import annotations

import logging
from typing import NoReturn

import grpc
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from matryoshka.engine.admission import QueueFullError
from matryoshka.engine.job import BudgetExceededError, JobFailedError, RequestCancelledError
from matryoshka.server.translate import InvalidRequest, to_duration

log = logging.getLogger(__name__)


class DrainingError(Exception):
    """The server is shutting down and takes no new work."""


class NotReadyError(Exception):
    """The model is still loading or warming up."""


def to_status(exc: BaseException, *, log_internal: bool = True) -> status_pb2.Status:
    """The google.rpc.Status a caller sees for `exc`; unexpected errors are logged with their trace."""
    if isinstance(exc, InvalidRequest):
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                for v in exc.violations
            ]
        )
        return _status(code_pb2.INVALID_ARGUMENT, f"invalid request: {exc}", bad)
    if isinstance(exc, QueueFullError):
        retry = error_details_pb2.RetryInfo(retry_delay=to_duration(exc.retry_after))
        return _status(code_pb2.RESOURCE_EXHAUSTED, str(exc), retry)
    if isinstance(exc, BudgetExceededError):
        return _status(code_pb2.DEADLINE_EXCEEDED, str(exc))
    if isinstance(exc, RequestCancelledError):
        return _status(code_pb2.CANCELLED, str(exc))
    if isinstance(exc, JobFailedError):  # this request's own rows failed; other requests ran on
        if log_internal:
            log.error("request failed in the engine: %s", exc)
        return _status(code_pb2.INTERNAL, f"the engine failed on this request: {exc}")
    if isinstance(exc, DrainingError):
        return _status(code_pb2.UNAVAILABLE, "the server is draining; retry on another replica")
    if isinstance(exc, NotReadyError):
        return _status(code_pb2.UNAVAILABLE, "the model is still loading; retry shortly")
    if log_internal:
        log.error("internal error", exc_info=exc)
    return _status(code_pb2.INTERNAL, f"internal error: {type(exc).__name__}")


async def abort(context: grpc.aio.ServicerContext, exc: BaseException) -> NoReturn:
    """Abort the call with the status for `exc` (details travel in grpc-status-details-bin)."""
    await context.abort_with_status(rpc_status.to_status(to_status(exc)))
    raise AssertionError("abort_with_status returned")  # pragma: no cover - grpc raises


def status_code(exc: BaseException) -> grpc.StatusCode:
    """The grpc.StatusCode `exc` maps to (for metrics labels)."""
    number = to_status(exc, log_internal=False).code
    return next(c for c in grpc.StatusCode if c.value[0] == number)


def _status(code: int, message: str, *details: object) -> status_pb2.Status:
    status = status_pb2.Status(code=code, message=message)
    for d in details:
        status.details.add().Pack(d)
    return status
