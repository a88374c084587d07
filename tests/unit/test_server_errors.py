"""Errors map to statuses in one place, with google.rpc details a client can read."""

from __future__ import annotations

from google.rpc import code_pb2, error_details_pb2

from matryoshka.engine.job import BudgetExceededError, JobFailedError, RequestCancelledError
from matryoshka.engine.plan import FieldViolation
from matryoshka.engine.scheduler import QueueFullError
from matryoshka.server.errors import DrainingError, NotReadyError, to_status
from matryoshka.server.translate import InvalidRequest


def test_invalid_request_carries_every_field_violation() -> None:
    status = to_status(
        InvalidRequest([FieldViolation("query", "must not be empty"), FieldViolation("depth", "x")])
    )
    assert status.code == code_pb2.INVALID_ARGUMENT
    (detail,) = status.details
    bad = error_details_pb2.BadRequest()
    assert detail.Unpack(bad)
    assert [(v.field, v.description) for v in bad.field_violations] == [
        ("query", "must not be empty"),
        ("depth", "x"),
    ]


def test_full_queue_asks_to_retry_later() -> None:
    status = to_status(QueueFullError(num_unfinished=64, retry_after=1.5))
    assert status.code == code_pb2.RESOURCE_EXHAUSTED
    retry = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(retry)
    assert retry.retry_delay.ToNanoseconds() == 1_500_000_000


def test_engine_and_lifecycle_errors() -> None:
    assert to_status(BudgetExceededError("late")).code == code_pb2.DEADLINE_EXCEEDED
    assert to_status(RequestCancelledError("bye")).code == code_pb2.CANCELLED
    failed = to_status(JobFailedError("layer 3 failed: RuntimeError: boom"), log_internal=False)
    assert failed.code == code_pb2.INTERNAL
    assert "layer 3 failed" in failed.message
    assert to_status(DrainingError()).code == code_pb2.UNAVAILABLE
    assert to_status(NotReadyError()).code == code_pb2.UNAVAILABLE


def test_unexpected_errors_are_internal_without_leaking_the_message() -> None:
    status = to_status(KeyError("secret-internal-detail"), log_internal=False)
    assert status.code == code_pb2.INTERNAL
    assert "secret" not in status.message
