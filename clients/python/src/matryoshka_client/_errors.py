"""RerankError: a failed call with its status code, message and the server's rich error details.

Servers attach a google.rpc.Status to a failed call in the `grpc-status-details-bin` trailer (what
grpcio-status's `rpc_status.to_status` sends); its details may hold a google.rpc.BadRequest naming every
broken request field, and a google.rpc.RetryInfo. They are decoded here with googleapis-common-protos,
for sync and asyncio errors alike, and tolerantly: a missing or undecodable trailer just means no details.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

DETAILS_KEY = "grpc-status-details-bin"


@dataclass(frozen=True)
class FieldViolation:
    """One broken rule of a request: the field's path in it (e.g. "width[1].length") and what is wrong."""

    field: str
    description: str


class RerankError(Exception):
    """A call the server (or the transport) failed.

    `code` is the grpc.StatusCode, `message` the status message, `field_violations` what a
    google.rpc.BadRequest detail listed (INVALID_ARGUMENT), `retry_delay` the seconds a
    google.rpc.RetryInfo asked for (None without one) and `status` the whole google.rpc.Status when the
    server sent one.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        field_violations: tuple[FieldViolation, ...] = (),
        retry_delay: float | None = None,
        status: Any = None,
    ) -> None:
        self.code = code
        self.message = message
        self.field_violations = field_violations
        self.retry_delay = retry_delay
        self.status = status
        super().__init__(self._describe())

    def _describe(self) -> str:
        name = getattr(self.code, "name", str(self.code))
        text = f"{name}: {self.message}"
        if self.field_violations:
            text += " [" + "; ".join(f"{v.field}: {v.description}" for v in self.field_violations) + "]"
        return text

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> RerankError:
        """From the exception a sync or asyncio call raised (both are grpc.Call-like)."""
        code = error.code() if callable(getattr(error, "code", None)) else grpc.StatusCode.UNKNOWN
        message = error.details() if callable(getattr(error, "details", None)) else str(error)
        status = rich_status(error)
        violations: list[FieldViolation] = []
        retry_delay: float | None = None
        for detail in status.details if status is not None else ():
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                violations.extend(FieldViolation(v.field, v.description) for v in bad.field_violations)
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                retry_delay = retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9
        return cls(
            code if code is not None else grpc.StatusCode.UNKNOWN,
            message or "",
            field_violations=tuple(violations),
            retry_delay=retry_delay,
            status=status,
        )


def rich_status(error: object) -> Any:
    """The google.rpc.Status in a failed call's trailing metadata, or None."""
    trailing = getattr(error, "trailing_metadata", None)
    if not callable(trailing):
        return None
    for key, value in trailing() or ():
        if key == DETAILS_KEY and isinstance(value, bytes):
            try:
                return status_pb2.Status.FromString(value)
            except DecodeError:
                return None
    return None
