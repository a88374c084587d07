"""Property-based fuzzing (hypothesis) of request translation and of the servicer over a real in-process
grpc.aio server with a tiny random model: random requests within and beyond the limits, and random or
mutated bytes. The only outcomes allowed are a valid answer or INVALID_ARGUMENT with field details."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TypeVar

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from transformers import PreTrainedTokenizerFast

from matryoshka.engine.reranker import Reranker
from matryoshka.model.matryoshka_model import MatryoshkaModel
from matryoshka.server.settings import Settings
from matryoshka.server.translate import InvalidRequest, RerankCall, to_call
from matryoshka_client.proto import rerank_service_pb2 as pb
from tests.conftest import WORDS, tiny_llama
from tests.unit.inprocess import serving

LIMITS = Settings(max_documents=6, max_query_bytes=64, max_document_bytes=128, max_request_bytes=4096)
NAME = "tiny-llama"
SERVICE = "/matryoshka.v1.RerankService/"

T = TypeVar("T")


def mostly(valid: st.SearchStrategy[T], wild: st.SearchStrategy[T]) -> st.SearchStrategy[T]:
    """`valid` nine times in ten, else `wild` (beyond the limits), so both paths get exercised."""
    return st.integers(0, 9).flatmap(lambda k: wild if k == 0 else valid)


layers = mostly(st.integers(0, 4), st.integers(-2, 6) | st.integers(-(2**31), 2**31 - 1))
numbers = st.floats(allow_nan=True, allow_infinity=True)
words = st.lists(st.sampled_from(WORDS[4:]), min_size=1, max_size=12).map(" ".join)
texts = mostly(words, st.text(max_size=80) | st.just(" ") | st.just("x" * 200))


@st.composite
def requests(draw: st.DrawFn, min_latency: float = 0.0) -> pb.RerankRequest:
    """Any RerankRequest the wire can carry: each field within the limits nine times in ten."""
    req = pb.RerankRequest(
        model=draw(st.sampled_from(["", NAME])),  # an unknown model is NOT_FOUND: test_bad_input
        query=draw(texts),
        top_n=draw(layers),
        depth=draw(layers),
        return_documents=draw(st.booleans()),
        score_type=draw(mostly(st.integers(0, 2), st.integers(-1, 9))),
        cache_mode=draw(mostly(st.integers(0, 3), st.integers(-1, 9))),
        request_id=draw(mostly(st.text(max_size=20), st.text(min_size=120, max_size=140))),
    )
    for _ in range(draw(mostly(st.integers(1, 6), st.integers(0, 8)))):
        req.documents.add(id=draw(st.text(max_size=4)), text=draw(texts))
    for _ in range(draw(mostly(st.just(0), st.integers(1, 3)))):
        step = req.width.add(layer=draw(layers))
        kind = draw(st.sampled_from(["ratio", "length", "none"]))
        if kind == "ratio":
            step.ratio = draw(mostly(st.floats(1, 4), numbers))
        elif kind == "length":
            step.length = draw(st.integers(-5, 80))
    if draw(st.integers(0, 3)) == 0:
        c = req.early_exit.confidence
        c.SetInParent()
        if draw(st.booleans()):
            c.relevant = draw(mostly(st.floats(0.5, 1), numbers))
        if draw(st.booleans()):
            c.irrelevant = draw(mostly(st.floats(0, 0.4), numbers))
        c.min_layer = draw(layers)
    if draw(st.integers(0, 3)) == 0:
        k = req.early_exit.cascade
        k.SetInParent()
        k.top_n, k.patience, k.min_layer = draw(layers), draw(layers), draw(layers)
        if draw(st.booleans()):
            k.margin = draw(mostly(st.floats(0, 1), numbers))
    if draw(st.integers(0, 3)) == 0:
        b = req.budget
        b.SetInParent()
        if draw(st.booleans()):
            seconds = draw(mostly(st.floats(min_latency, 100), st.sampled_from([-1.0, 0.0])))
            b.max_latency.FromNanoseconds(int(seconds * 1e9))
        if draw(st.booleans()):
            b.max_flops = draw(mostly(st.floats(1e3, 1e15), numbers))
    t = req.truncation
    t.max_query_tokens = draw(mostly(st.integers(0, 64), st.integers(-3, 80)))
    t.max_document_tokens = draw(mostly(st.integers(0, 512), st.integers(-3, 600)))
    t.side = draw(mostly(st.integers(0, 2), st.integers(-1, 9)))
    return req


@pytest.fixture(scope="module")
def model(tiny_tokenizer: PreTrainedTokenizerFast) -> MatryoshkaModel:
    return MatryoshkaModel.from_hf(NAME, tiny_llama(), tiny_tokenizer)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(req=requests())
def test_translation_accepts_or_names_every_broken_field(
    model: MatryoshkaModel, req: pb.RerankRequest
) -> None:
    try:
        call = to_call(req, {NAME: model.info}, NAME, LIMITS)
    except InvalidRequest as exc:
        violations = exc.violations
        assert violations, "an InvalidRequest must name at least one field"
        assert all(v.field and v.description for v in violations)
        return
    assert isinstance(call, RerankCall)
    assert call.plan.depth in model.info.head_layers
    assert len(call.documents) == len(req.documents) <= LIMITS.max_documents


@pytest.fixture(scope="module")
def stub_channel(model: MatryoshkaModel) -> Iterator[grpc.Channel]:
    """A real server (app.start) over the tiny model, and a channel to it."""
    server_settings = Settings(
        port=0, max_documents=6, max_query_bytes=64, max_document_bytes=128, max_request_bytes=4096
    )
    with (
        serving(server_settings, Reranker(model)) as running,
        grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel,
    ):
        yield channel


def check_error(error: grpc.RpcError) -> None:
    """INVALID_ARGUMENT with at least one named field in a BadRequest."""
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
    status = rpc_status.from_call(error)
    assert status is not None
    bad = error_details_pb2.BadRequest()
    assert any(d.Unpack(bad) for d in status.details)
    assert bad.field_violations
    assert all(v.description for v in bad.field_violations)


def send(channel: grpc.Channel, method: str, payload: bytes) -> list[bytes]:
    """Raw bytes to a method; the raw answers (one for unary)."""
    if method == "StreamRerank":
        return list(channel.unary_stream(SERVICE + method)(payload, timeout=60))
    return [channel.unary_unary(SERVICE + method)(payload, timeout=60)]


def check_answer(req: pb.RerankRequest, answer: pb.RerankResponse | pb.StreamRerankResponse) -> None:
    expected = min(req.top_n, len(req.documents)) if req.top_n > 0 else len(req.documents)
    assert len(answer.results) == expected
    assert all(r.exit_reason for r in answer.results)
    # A score is finite, except the logit of a document no head reached (a budget too small for any
    # head answers in input order: probability 0, logit -inf, exit layer 0).
    assert all(math.isfinite(r.score) or (r.score == -math.inf and r.exit_layer == 0) for r in answer.results)
    assert answer.request_id == (req.request_id or answer.request_id) != ""


# Positive latencies stay generous so that most examples reach a head (a budget too small for any head
# answers in input order, which check_answer also allows).
@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(req=requests(min_latency=5.0), streamed=st.booleans())
def test_servicer_answers_or_names_the_broken_fields(
    stub_channel: grpc.Channel, req: pb.RerankRequest, streamed: bool
) -> None:
    method = "StreamRerank" if streamed else "Rerank"
    payload = (pb.StreamRerankRequest(request=req) if streamed else req).SerializeToString()
    try:
        answers = send(stub_channel, method, payload)
    except grpc.RpcError as error:
        check_error(error)
        event("INVALID_ARGUMENT")
        return
    event("answered")
    if streamed:
        final = pb.StreamRerankResponse.FromString(answers[-1])
        assert final.final
        check_answer(req, final)
    else:
        check_answer(req, pb.RerankResponse.FromString(answers[0]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    payload=st.binary(max_size=300)
    | st.builds(
        lambda req, at, byte: (lambda b: b[:at] + bytes([byte]) + b[at + 1 :])(req.SerializeToString()),
        requests(min_latency=5.0),
        st.integers(0, 300),
        st.integers(0, 255),
    ),
    method=st.sampled_from(["Rerank", "StreamRerank", "GetModelInfo"]),
)
def test_servicer_survives_random_and_mutated_bytes(
    stub_channel: grpc.Channel, payload: bytes, method: str
) -> None:
    try:
        send(stub_channel, method, payload)
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.NOT_FOUND:
            assert model_named(method, payload) not in ("", NAME)  # bytes that name a model nobody serves
            return
        check_error(error)


def model_named(method: str, payload: bytes) -> str:
    """The model a payload that decodes asks for."""
    if method == "StreamRerank":
        return pb.StreamRerankRequest.FromString(payload).request.model
    request_type = pb.GetModelInfoRequest if method == "GetModelInfo" else pb.RerankRequest
    return request_type.FromString(payload).model
