"""Every error -> gRPC status, in one place. Rich details follow google.rpc (BadRequest, RetryInfo).

Messages and details are capped (MAX_MESSAGE_BYTES, MAX_DESCRIPTION_BYTES, MAX_DETAILS_BYTES) so a
hostile request (a megabyte model name, a thousand bad documents) still gets trailers that fit gRPC's
metadata limits.
"""

from __future__ import annotations

import logging
from typing import NoReturn

import grpc
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from matryoshka.engine.admission import QueueFullError
from matryoshka.engine.job import BudgetExceededError, JobFailedError, RequestCancelledError
from matryoshka.server.answer import NonFiniteScoreError, to_duration
from matryoshka.server.translate import InvalidRequest, UnknownModelError

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 1024
MAX_DESCRIPTION_BYTES = 512
MAX_DETAILS_BYTES = 2048


class DrainingError(Exception):
    """The server is shutting down and takes no new work."""


class NotReadyError(Exception):
    """The model is still loading or warming up."""


class MissingCredentialsError(Exception):
    """The call carries no bearer token on a server that requires one."""


class BadCredentialsError(Exception):
    """The call's bearer token is not one the server accepts."""


def to_status(exc: BaseException, *, log_internal: bool = True) -> status_pb2.Status:
    """The google.rpc.Status a caller sees for `exc`; unexpected errors are logged with their trace."""
    if isinstance(exc, InvalidRequest):
        return _status(code_pb2.INVALID_ARGUMENT, f"invalid request: {exc}", _bad_request(exc))
    if isinstance(exc, UnknownModelError):
        return _status(code_pb2.NOT_FOUND, str(exc))
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
    if isinstance(exc, MissingCredentialsError):
        return _status(code_pb2.UNAUTHENTICATED, "missing bearer token (authorization metadata)")
    if isinstance(exc, BadCredentialsError):
        return _status(code_pb2.PERMISSION_DENIED, "the bearer token is not accepted")
    if isinstance(exc, NonFiniteScoreError):
        log.error("%s", exc)
        return _status(code_pb2.INTERNAL, str(exc))
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


def truncate(text: str, max_bytes: int) -> str:
    """`text` cut to at most `max_bytes` UTF-8 bytes, with a marker saying how much was cut."""
    data = text.encode()
    if len(data) <= max_bytes:
        return text
    marker = f"...[{len(data) - max_bytes} more bytes]"
    return data[: max_bytes - len(marker)].decode(errors="ignore") + marker


def _bad_request(exc: InvalidRequest) -> error_details_pb2.BadRequest:
    """Every violation, descriptions capped, until MAX_DETAILS_BYTES; then one saying how many more."""
    bad = error_details_pb2.BadRequest()
    for i, v in enumerate(exc.violations):
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=truncate(v.field, MAX_DESCRIPTION_BYTES),
            description=truncate(v.description, MAX_DESCRIPTION_BYTES),
        )
        if bad.ByteSize() + violation.ByteSize() > MAX_DETAILS_BYTES - 96:
            more = len(exc.violations) - i
            bad.field_violations.add(field=violation.field[:64], description=f"and {more} more violations")
            break
        bad.field_violations.append(violation)
    return bad


def _status(code: int, message: str, *details: object) -> status_pb2.Status:
    status = status_pb2.Status(code=code, message=truncate(message, MAX_MESSAGE_BYTES))
    for d in details:
        status.details.add().Pack(d)
    return status
