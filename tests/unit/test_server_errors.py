"""Errors map to statuses in one place, with google.rpc details a client can read."""

from __future__ import annotations

from google.rpc import code_pb2, error_details_pb2

from matryoshka.engine.job import BudgetExceededError, JobFailedError, RequestCancelledError
from matryoshka.engine.plan import FieldViolation
from matryoshka.engine.scheduler import QueueFullError
from matryoshka.server.answer import NonFiniteScoreError
from matryoshka.server.errors import (
    MAX_DETAILS_BYTES,
    MAX_MESSAGE_BYTES,
    BadCredentialsError,
    DrainingError,
    MissingCredentialsError,
    NotReadyError,
    to_status,
    truncate,
)
from matryoshka.server.translate import InvalidRequest, UnknownModelError


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


def test_messages_and_details_are_capped_so_trailers_fit() -> None:
    huge = InvalidRequest([FieldViolation(f"documents[{i}].text", "x" * 5000) for i in range(1000)])
    status = to_status(huge)
    assert len(status.message.encode()) <= MAX_MESSAGE_BYTES
    assert status.message.endswith("more bytes]")
    bad = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad)
    assert bad.ByteSize() <= MAX_DETAILS_BYTES
    assert bad.field_violations[0].field == "documents[0].text"
    assert bad.field_violations[-1].description.startswith("and ")
    assert bad.field_violations[-1].description.endswith(" more violations")


def test_truncate_keeps_short_text_and_cuts_on_characters() -> None:
    assert truncate("short", 100) == "short"
    cut = truncate("\u00e9" * 1000, 100)
    assert len(cut.encode()) <= 100
    assert cut.endswith("more bytes]")


def test_unknown_model_auth_and_nan_scores() -> None:
    assert to_status(UnknownModelError("x" * 100_000, ["a"])).code == code_pb2.NOT_FOUND
    assert len(to_status(UnknownModelError("x" * 100_000, ["a"])).message) <= MAX_MESSAGE_BYTES
    assert to_status(MissingCredentialsError()).code == code_pb2.UNAUTHENTICATED
    assert to_status(BadCredentialsError()).code == code_pb2.PERMISSION_DENIED
    nan = to_status(NonFiniteScoreError([3, 7]))
    assert nan.code == code_pb2.INTERNAL
    assert "[3, 7]" in nan.message
