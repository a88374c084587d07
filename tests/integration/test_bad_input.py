"""The wire tried as a hostile caller would: every bad input gets its proper status over a real server
(the shipped default: depth lens, heads at 15/20/22/25/30), never UNKNOWN or INTERNAL, and the trailers
always fit."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from matryoshka_client import RerankClient
from matryoshka_client.proto import rerank_service_pb2 as pb
from tests.integration.conftest import ServerProcess

pytestmark = pytest.mark.slow

QUERY = "who wrote romeo and juliet"
DOCS = ["Bananas are rich in potassium.", "Romeo and Juliet is a tragedy by William Shakespeare."]
SERVICE = "/matryoshka.v1.RerankService/"
MARK = "\u00a7MARK\u00a7"  # replaced by invalid UTF-8 of the same length after serialising
MAX_TRAILER_TEXT = 1024  # errors.MAX_MESSAGE_BYTES


def request(**fields: object) -> pb.RerankRequest:
    """A valid request (two documents, depth 15) with `fields` changed."""
    base: dict[str, object] = {"query": QUERY, "documents": [pb.Document(text=d) for d in DOCS], "depth": 15}
    return pb.RerankRequest(**{**base, **fields})


def with_nan(path: str, **fields: object) -> Callable[[], pb.RerankRequest]:
    def build() -> pb.RerankRequest:
        req = request(**fields)
        *parents, leaf = path.split(".")
        target = req
        for p in parents:
            target = getattr(target, p)
        setattr(target, leaf, math.nan)
        return req

    return build


def broken_utf8(message: pb.RerankRequest | pb.StreamRerankRequest | pb.GetModelInfoRequest) -> bytes:
    """`message` serialised with MARK swapped for bytes that are not UTF-8."""
    data = message.SerializeToString()
    mark = MARK.encode()
    assert mark in data
    return data.replace(mark, b"\xff\xfe" + b"\xc3" * (len(mark) - 2))


@dataclass(frozen=True)
class Row:
    case: str
    method: str
    payload: Callable[[], bytes]
    code: grpc.StatusCode
    field: str | None = None  # a BadRequest field violation that must be there
    text: str = ""  # a phrase the description or message must contain


def rerank(**fields: object) -> Callable[[], bytes]:
    return lambda: request(**fields).SerializeToString()


def built(make: Callable[[], pb.RerankRequest]) -> Callable[[], bytes]:
    return lambda: make().SerializeToString()


INVALID = grpc.StatusCode.INVALID_ARGUMENT
ROWS = [
    Row("invalid UTF-8 in the query", "Rerank", lambda: broken_utf8(request(query=MARK)), INVALID, "query"),
    Row(
        "invalid UTF-8 in a document",
        "Rerank",
        lambda: broken_utf8(request(documents=[pb.Document(text="ok"), pb.Document(text=MARK)])),
        INVALID,
        "documents[1].text",
    ),
    Row(
        "invalid UTF-8 in a document id",
        "Rerank",
        lambda: broken_utf8(request(documents=[pb.Document(id=MARK, text="ok")])),
        INVALID,
        "documents[0].id",
    ),
    Row("invalid UTF-8 in the model", "Rerank", lambda: broken_utf8(request(model=MARK)), INVALID, "model"),
    Row(
        "invalid UTF-8 in the request id",
        "Rerank",
        lambda: broken_utf8(request(request_id=MARK)),
        INVALID,
        "request_id",
    ),
    Row(
        "invalid UTF-8 in a streamed query",
        "StreamRerank",
        lambda: broken_utf8(pb.StreamRerankRequest(request=request(query=MARK))),
        INVALID,
        "request.query",
    ),
    Row(
        "invalid UTF-8 in GetModelInfo",
        "GetModelInfo",
        lambda: broken_utf8(pb.GetModelInfoRequest(model=MARK)),
        INVALID,
        "model",
    ),
    Row("a truncated message", "Rerank", lambda: request().SerializeToString()[:-3], INVALID, "documents[1]"),
    Row(
        "a message over the size limit",
        "Rerank",
        rerank(query="q " * (5 << 20)),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    ),
    Row("a 2 MB request id", "Rerank", rerank(request_id="r" * (2 << 20)), INVALID, "request_id"),
    Row(
        "a 2 MB model name",
        "Rerank",
        rerank(model="m" * (2 << 20)),
        grpc.StatusCode.NOT_FOUND,
        None,
        "more bytes",
    ),
    Row(
        "a 2 MB non-ASCII model name", "Rerank", rerank(model="\u00e9" * (1 << 20)), grpc.StatusCode.NOT_FOUND
    ),
    Row(
        "a thousand empty documents",
        "Rerank",
        rerank(documents=[pb.Document(text=" ")] * 1000),
        INVALID,
        "documents[0].text",
        "more violations",
    ),
    Row("an unknown model", "Rerank", rerank(model="no-such-model"), grpc.StatusCode.NOT_FOUND),
    Row(
        "an unknown model, streamed",
        "StreamRerank",
        lambda: pb.StreamRerankRequest(request=request(model="no-such-model")).SerializeToString(),
        grpc.StatusCode.NOT_FOUND,
    ),
    Row(
        "an unknown model, model info",
        "GetModelInfo",
        lambda: pb.GetModelInfoRequest(model="no-such-model").SerializeToString(),
        grpc.StatusCode.NOT_FOUND,
    ),
    Row("an unknown score type", "Rerank", rerank(score_type=99), INVALID, "score_type"),
    Row(
        "an unknown truncation side",
        "Rerank",
        rerank(truncation=pb.Truncation(side=7)),  # type: ignore[arg-type]
        INVALID,
        "truncation.side",
    ),
    Row("an unknown cache mode", "Rerank", rerank(cache_mode=42), INVALID, "cache_mode"),
    Row(
        "a NaN relevant threshold",
        "Rerank",
        built(with_nan("early_exit.confidence.relevant")),
        INVALID,
        "early_exit.confidence.relevant",
    ),
    Row(
        "a NaN cascade margin",
        "Rerank",
        built(with_nan("early_exit.cascade.margin", top_n=1)),
        INVALID,
        "early_exit.cascade.margin",
    ),
    Row("a NaN FLOP budget", "Rerank", built(with_nan("budget.max_flops")), INVALID, "budget.max_flops"),
    Row(
        "a NaN width ratio",
        "Rerank",
        rerank(width=[pb.WidthStep(layer=4, ratio=math.nan)]),
        INVALID,
        "width[0].ratio",
    ),
    Row("a negative top_n", "Rerank", rerank(top_n=-1), INVALID, "top_n"),
    Row(
        "depth not at a head layer",
        "Rerank",
        rerank(depth=16),
        INVALID,
        "depth",
        "heads at [15, 20, 22, 25, 30]",
    ),
    Row("depth beyond the model", "Rerank", rerank(depth=31), INVALID, "depth"),
    Row("a negative depth", "Rerank", rerank(depth=-5), INVALID, "depth"),
]


def call(server: ServerProcess, method: str, payload: bytes) -> grpc.RpcError:
    """Send raw bytes; return the error the server answered with."""
    with grpc.insecure_channel(server.target) as channel:
        try:
            if method == "StreamRerank":
                list(channel.unary_stream(SERVICE + method)(payload, timeout=60))
            else:
                channel.unary_unary(SERVICE + method)(payload, timeout=60)
        except grpc.RpcError as error:
            return error
    raise AssertionError(f"{method} accepted the payload")


@pytest.mark.parametrize("row", ROWS, ids=[r.case for r in ROWS])
def test_bad_input_gets_its_status(default_server: ServerProcess, row: Row) -> None:
    error = call(default_server, row.method, row.payload())
    assert error.code() == row.code, error.details()
    assert len(error.details().encode()) <= MAX_TRAILER_TEXT
    status: status_pb2.Status | None = rpc_status.from_call(error)  # type: ignore[arg-type]
    violations = []
    if status is not None:
        for detail in status.details:
            bad = error_details_pb2.BadRequest()
            if detail.Unpack(bad):
                violations = [(v.field, v.description) for v in bad.field_violations]
    if row.code == INVALID:
        assert row.field in {f for f, _ in violations}, violations
        assert sum(len(f) + len(d) for f, d in violations) < 4096
    described = error.details() + " ".join(d for _, d in violations)
    assert row.text in described


def test_top_n_beyond_the_documents_returns_them_all(default_server: ServerProcess) -> None:
    with RerankClient(default_server.target) as client:
        result = client.rerank(QUERY, DOCS, top_n=50, depth=15)
    assert sorted(d.index for d in result.results) == [0, 1]


def test_still_serving_after_the_matrix(default_server: ServerProcess) -> None:
    with RerankClient(default_server.target) as client:
        result = client.rerank(QUERY, DOCS, depth=15)
    assert result.request_id  # assigned by the server when the caller gives none
    assert len(result.results) == 2
