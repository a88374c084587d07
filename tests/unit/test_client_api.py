"""The Python client: request building, result conversion and errors on the real generated messages, and
the sync and asyncio transports against a small in-process gRPC server with a fake servicer."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from datetime import timedelta
from typing import Any

import grpc
import pytest
from google.protobuf.any_pb2 import Any as AnyMessage
from google.protobuf.duration_pb2 import Duration
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from matryoshka_client import (
    AsyncRerankClient,
    Budget,
    CascadeExit,
    ConfidenceExit,
    Document,
    DocumentInput,
    FieldViolation,
    RerankClient,
    RerankError,
    RerankStage,
    Truncation,
    WidthStep,
)
from matryoshka_client.convert import build_request, to_model_info, to_result, to_stage
from matryoshka_client.proto import rerank_service_pb2 as pb
from matryoshka_client.proto import rerank_service_pb2_grpc as pb_grpc

# ---------------------------------------------------------------------------------------------------------
# Request building


def test_documents_in_every_accepted_form() -> None:
    request = build_request(
        "q",
        ["plain", ("a", "pair"), {"id": "b", "text": "mapping"}, {"text": "no id"}, Document("dc", id="c")],
    )
    assert [(d.id, d.text) for d in request.documents] == [
        ("", "plain"),
        ("a", "pair"),
        ("b", "mapping"),
        ("", "no id"),
        ("c", "dc"),
    ]


def test_document_ids_are_stringified_and_none_is_empty() -> None:
    documents: list[Any] = [(7, "seven"), {"id": None, "text": "none"}]
    request = build_request("q", documents)
    assert [d.id for d in request.documents] == ["7", ""]


@pytest.mark.parametrize(
    ("documents", "message"),
    [
        ("a single string", "not a single string"),
        ([42], r"documents\[0\]: expected str"),
        ([("a", "b", "c")], r"documents\[0\]: expected str"),
        (["ok", {"id": "x"}], r"documents\[1\]: a mapping needs a 'text' key"),
        ([("id", 3)], r"documents\[0\]: text must be a str"),
    ],
)
def test_bad_documents_raise_type_error(documents: Any, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        build_request("q", documents)


def test_defaults_leave_every_option_unset() -> None:
    request = build_request("q", ["d"])
    assert request == pb.RerankRequest(query="q", documents=[pb.Document(text="d")])
    for name in ("early_exit", "budget", "truncation"):
        assert not request.HasField(name)
    assert request.score_type == pb.SCORE_TYPE_UNSPECIFIED
    assert request.cache_mode == pb.CACHE_MODE_UNSPECIFIED


def test_every_option_reaches_its_field() -> None:
    request = build_request(
        "q",
        ["d"],
        model="m",
        top_n=3,
        return_documents=True,
        depth=12,
        width=[WidthStep(4, ratio=2.0), WidthStep(8, length=64)],
        confidence=ConfidenceExit(relevant=0.95, irrelevant=0.05, min_layer=2),
        cascade=CascadeExit(top_n=5, margin=0.2, patience=2, min_layer=3),
        budget=Budget(max_latency=0.25, max_flops=1e12),
        score_type="logit",
        truncation=Truncation(max_query_tokens=32, max_document_tokens=128, side="start"),
        cache_mode="read_only",
        request_id="req-1",
    )
    assert (request.model, request.top_n, request.return_documents, request.depth) == ("m", 3, True, 12)
    assert [(w.layer, w.WhichOneof("target")) for w in request.width] == [(4, "ratio"), (8, "length")]
    assert (request.width[0].ratio, request.width[1].length) == (2.0, 64)
    c = request.early_exit.confidence
    assert (c.relevant, c.irrelevant, c.min_layer) == (0.95, 0.05, 2)
    k = request.early_exit.cascade
    assert (k.top_n, k.patience, k.min_layer) == (5, 2, 3)
    assert k.margin == pytest.approx(0.2)
    assert request.budget.max_latency == Duration(nanos=250_000_000)
    assert request.budget.max_flops == 1e12
    assert request.score_type == pb.SCORE_TYPE_LOGIT
    t = request.truncation
    assert (t.max_query_tokens, t.max_document_tokens, t.side) == (32, 128, pb.TRUNCATION_SIDE_START)
    assert request.cache_mode == pb.CACHE_MODE_READ_ONLY
    assert request.request_id == "req-1"


def test_unset_optionals_stay_unset_and_zero_is_sent() -> None:
    request = build_request(
        "q", ["d"], confidence=ConfidenceExit(irrelevant=0.1), cascade=CascadeExit(margin=0.0)
    )
    c = request.early_exit.confidence
    assert not c.HasField("relevant")
    assert c.HasField("irrelevant")
    assert request.early_exit.cascade.HasField("margin")  # 0 is a real margin, not the default
    assert not build_request("q", ["d"], cascade=CascadeExit()).early_exit.cascade.HasField("margin")
    assert not build_request("q", ["d"], cascade=CascadeExit()).early_exit.HasField("confidence")
    # An empty ConfidenceExit still switches the policy on (the server's default thresholds).
    assert build_request("q", ["d"], confidence=ConfidenceExit()).early_exit.HasField("confidence")
    cut = build_request("q", ["d"], first_stage_top_n=2).early_exit
    assert cut.first_stage.top_n == 2
    assert not cut.HasField("cascade")
    assert not cut.HasField("confidence")
    assert not build_request("q", ["d"], cascade=CascadeExit()).early_exit.HasField("first_stage")


def test_budget_as_timedelta_or_flops_only() -> None:
    b = build_request("q", ["d"], budget=Budget(max_latency=timedelta(milliseconds=1500))).budget
    assert (b.max_latency.seconds, b.max_latency.nanos) == (1, 500_000_000)
    assert not b.HasField("max_flops")
    b = build_request("q", ["d"], budget=Budget(max_flops=5e9)).budget
    assert not b.HasField("max_latency")
    assert b.max_flops == 5e9
    with pytest.raises(ValueError, match="finite"):
        build_request("q", ["d"], budget=Budget(max_latency=float("inf")))


def test_width_step_needs_exactly_one_target() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        WidthStep(3)
    with pytest.raises(ValueError, match="exactly one"):
        WidthStep(3, ratio=2.0, length=10)


@pytest.mark.parametrize(
    "options",
    [
        {"score_type": "probabilty"},
        {"cache_mode": "write_only"},
        {"truncation": Truncation(side="middle")},  # type: ignore[arg-type]
    ],
)
def test_unknown_choices_raise_value_error(options: Any) -> None:
    with pytest.raises(ValueError, match="must be one of"):
        build_request("q", ["d"], **options)


def test_unknown_option_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        build_request("q", ["d"], topn=3)  # type: ignore[call-arg]


# ---------------------------------------------------------------------------------------------------------
# Result conversion


def _response() -> pb.RerankResponse:
    return pb.RerankResponse(
        results=[
            pb.RerankResult(
                index=2, id="c", score=0.9, exit_layer=6, exit_reason=pb.EXIT_REASON_DEPTH, document=""
            ),
            pb.RerankResult(index=0, id="a", score=0.1, exit_layer=2, exit_reason=pb.EXIT_REASON_CASCADE),
        ],
        usage=pb.Usage(layer_tokens=900, flops=2.0e9, full_flops=8.0e9, flops_saved=0.75),
        timing=pb.Timing(
            queue=Duration(nanos=5_000_000),
            compute=Duration(seconds=1, nanos=250_000_000),
            total=Duration(seconds=2),
        ),
        partial=True,
        model="tiny",
        request_id="r-9",
    )


def test_response_converts_to_plain_types() -> None:
    result = to_result(_response())
    first, second = result.results
    assert (first.index, first.id, first.score, first.exit_layer, first.exit_reason) == (
        2,
        "c",
        0.9,
        6,
        "depth",
    )
    assert first.document == ""  # present but empty is not absent
    assert second.document is None
    assert second.exit_reason == "cascade"
    assert (result.usage.layer_tokens, result.usage.flops_saved) == (900, 0.75)
    assert result.timing.queue_seconds == pytest.approx(0.005)
    assert result.timing.compute_seconds == pytest.approx(1.25)
    assert result.timing.total_seconds == 2.0
    assert (result.partial, result.model, result.request_id) == (True, "tiny", "r-9")


@pytest.mark.parametrize(
    ("value", "name"),
    [
        (pb.EXIT_REASON_UNSPECIFIED, ""),
        (pb.EXIT_REASON_DEPTH, "depth"),
        (pb.EXIT_REASON_CONFIDENT_RELEVANT, "confident_relevant"),
        (pb.EXIT_REASON_CONFIDENT_IRRELEVANT, "confident_irrelevant"),
        (pb.EXIT_REASON_CASCADE, "cascade"),
        (pb.EXIT_REASON_STABLE, "stable"),
        (pb.EXIT_REASON_BUDGET, "budget"),
        (99, "unknown_99"),  # a reason added to the contract after this client was built
    ],
)
def test_exit_reason_names(value: int, name: str) -> None:
    result = pb.RerankResult(exit_reason=value)  # type: ignore[arg-type]
    assert to_result(pb.RerankResponse(results=[result])).results[0].exit_reason == name


def test_stages_carry_usage_only_when_final() -> None:
    running = to_stage(pb.StreamRerankResponse(layer=2, results=[pb.RerankResult(index=1, exit_layer=2)]))
    assert running.results[0].running
    assert (running.final, running.usage, running.timing) == (False, None, None)
    with pytest.raises(ValueError, match="final"):
        running.result()
    final = to_stage(
        pb.StreamRerankResponse(
            layer=6, results=_response().results, final=True, usage=pb.Usage(flops=1.0), timing=pb.Timing()
        )
    )
    assert final.result().usage.flops == 1.0
    assert not final.results[0].running


def test_model_info_converts() -> None:
    info = to_model_info(
        pb.ModelInfo(
            name="smollm2",
            family=pb.MODEL_FAMILY_DECODER,
            num_layers=30,
            hidden_size=576,
            head_layers=[10, 20, 30],
            scoring=pb.SCORING_MODE_QUERY_LIKELIHOOD,
            merge_ratios=[2.0, 4.0],
            limits=pb.ModelLimits(
                max_documents=256, max_request_bytes=4 << 20, max_query_tokens=128, max_document_tokens=512
            ),
            default_truncation=pb.Truncation(max_query_tokens=64, max_document_tokens=192),
            calibration_version="identity",
            fingerprint="abc",
            template_version="query-likelihood-v1",
            is_default=True,
        )
    )
    assert (info.family, info.scoring, info.head_layers, info.merge_ratios) == (
        "decoder",
        "query_likelihood",
        (10, 20, 30),
        (2.0, 4.0),
    )
    assert info.limits.max_request_bytes == 4 << 20
    assert info.default_truncation == Truncation(64, 192, None)
    assert info.is_default


# ---------------------------------------------------------------------------------------------------------
# Errors without a server


class _FakeRpcError(grpc.RpcError):  # type: ignore[misc]  # grpcio has no type information
    def __init__(self, code: grpc.StatusCode, details: str, trailing: tuple[tuple[str, Any], ...]) -> None:
        self._code, self._details, self._trailing = code, details, trailing

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[tuple[str, Any], ...]:
        return self._trailing


def test_error_without_details_or_with_garbage_details() -> None:
    plain = RerankError.from_rpc_error(_FakeRpcError(grpc.StatusCode.UNAVAILABLE, "down", ()))
    assert (plain.code, plain.message, plain.field_violations, plain.status) == (
        grpc.StatusCode.UNAVAILABLE,
        "down",
        (),
        None,
    )
    assert str(plain) == "UNAVAILABLE: down"
    garbage = (("grpc-status-details-bin", b"\xff\xff not a status"),)
    error = RerankError.from_rpc_error(_FakeRpcError(grpc.StatusCode.INTERNAL, "boom", garbage))
    assert (error.code, error.status) == (grpc.StatusCode.INTERNAL, None)


# ---------------------------------------------------------------------------------------------------------
# Transport: a fake servicer on a loopback port


def _rich_abort(context: grpc.ServicerContext, code: int, message: str, *details: Any) -> None:
    status = status_pb2.Status(code=code, message=message)
    for detail in details:
        packed = AnyMessage()
        packed.Pack(detail)
        status.details.append(packed)
    context.abort_with_status(rpc_status.to_status(status))


class FakeServicer(pb_grpc.RerankServiceServicer):
    """Scores a document by the share of query words it contains; a few magic queries fail."""

    def __init__(self) -> None:
        self.last_metadata: dict[str, str] = {}
        self.last_time_remaining: float | None = None
        self.last_request: pb.RerankRequest | None = None
        self.cancelled = threading.Event()

    def _score(self, request: pb.RerankRequest, context: grpc.ServicerContext) -> list[pb.RerankResult]:
        self.last_request = request
        self.last_metadata = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        self.last_time_remaining = context.time_remaining()
        if not request.query.strip():
            _rich_abort(
                context,
                code_pb2.INVALID_ARGUMENT,
                "2 invalid fields",
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field="query", description="must not be empty"
                        ),
                        error_details_pb2.BadRequest.FieldViolation(
                            field="width[0].ratio", description="must be >= 1"
                        ),
                    ]
                ),
            )
        if request.query == "busy":
            _rich_abort(
                context,
                code_pb2.RESOURCE_EXHAUSTED,
                "queue full",
                error_details_pb2.RetryInfo(retry_delay=Duration(seconds=2, nanos=500_000_000)),
            )
        if request.model == "missing":
            context.abort(grpc.StatusCode.NOT_FOUND, "no model 'missing'")
        if request.query == "slow":
            time.sleep(0.5)
        words = set(request.query.lower().split())
        results = [
            pb.RerankResult(
                index=i,
                id=d.id,
                score=len(words & set(d.text.lower().split())) / max(len(words), 1),
                exit_layer=4,
                exit_reason=pb.EXIT_REASON_DEPTH,
                document=d.text if request.return_documents else None,
            )
            for i, d in enumerate(request.documents)
        ]
        results.sort(key=lambda r: (-r.score, r.index))
        return results[: request.top_n] if request.top_n else results

    def Rerank(self, request: pb.RerankRequest, context: grpc.ServicerContext) -> pb.RerankResponse:  # noqa: N802
        results = self._score(request, context)
        return pb.RerankResponse(
            results=results,
            usage=pb.Usage(layer_tokens=10 * len(results), flops=1e6, full_flops=4e6, flops_saved=0.75),
            timing=pb.Timing(compute=Duration(nanos=1_000_000)),
            model=request.model or "fake",
            request_id=request.request_id or "assigned-1",
        )

    def StreamRerank(  # noqa: N802
        self, request: pb.StreamRerankRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.StreamRerankResponse]:
        context.add_callback(self.cancelled.set)
        inner = request.request
        if inner.query == "endless":
            layer = 0
            while context.is_active():
                layer += 1
                yield pb.StreamRerankResponse(layer=layer, model="fake")
                time.sleep(0.01)
            return
        final = self._score(inner, context)
        for layer in (1, 2, 3):
            running = [
                pb.RerankResult(index=r.index, id=r.id, score=r.score * layer / 4, exit_layer=layer)
                for r in final
            ]
            yield pb.StreamRerankResponse(layer=layer, results=running, model="fake")
            if layer == 2 and inner.query == "fail midway":
                context.abort(grpc.StatusCode.INTERNAL, "engine broke")
        yield pb.StreamRerankResponse(
            layer=4,
            results=final,
            final=True,
            usage=pb.Usage(flops=1e6, full_flops=1e6),
            timing=pb.Timing(total=Duration(nanos=2_000_000)),
            model="fake",
        )

    def GetModelInfo(  # noqa: N802
        self, request: pb.GetModelInfoRequest, context: grpc.ServicerContext
    ) -> pb.GetModelInfoResponse:
        models = [
            pb.ModelInfo(
                name="fake", family=pb.MODEL_FAMILY_DECODER, num_layers=4, head_layers=[2, 4], is_default=True
            ),
            pb.ModelInfo(name="enc", family=pb.MODEL_FAMILY_ENCODER, num_layers=6, head_layers=[6]),
        ]
        if request.model:
            models = [m for m in models if m.name == request.model]
            if not models:
                context.abort(grpc.StatusCode.NOT_FOUND, f"no model {request.model!r}")
        return pb.GetModelInfoResponse(models=models)


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, FakeServicer]]:
    servicer = FakeServicer()
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_RerankServiceServicer_to_server(servicer, srv)
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    yield f"127.0.0.1:{port}", servicer
    srv.stop(grace=None)


DOCS: list[DocumentInput] = [
    "the cat sat on the mat",
    ("paris", "paris is the capital of france"),
    {"id": "sun", "text": "the sun"},
]


def test_sync_rerank_round_trip(server: tuple[str, FakeServicer]) -> None:
    target, _ = server
    with RerankClient(target) as client:
        result = client.rerank("capital of france", DOCS, top_n=2, return_documents=True, request_id="r1")
    assert [(d.index, d.id) for d in result.results] == [(1, "paris"), (0, "")]
    assert result.results[0].document == "paris is the capital of france"
    assert result.results[0].exit_reason == "depth"
    assert result.usage.flops_saved == 0.75
    assert result.timing.compute_seconds == pytest.approx(0.001)
    assert (result.model, result.request_id) == ("fake", "r1")


def test_client_timeout_and_metadata_reach_the_server(server: tuple[str, FakeServicer]) -> None:
    target, servicer = server
    with RerankClient(target, timeout=30, metadata={"x-tenant": "acme"}) as client:
        client.rerank("q", ["d"], metadata=[("x-request-id", "abc")])
        assert servicer.last_metadata["x-tenant"] == "acme"
        assert servicer.last_metadata["x-request-id"] == "abc"
        assert servicer.last_time_remaining is not None
        assert 20 < servicer.last_time_remaining < 31  # deadlines travel rounded up a little
        client.rerank("q", ["d"], timeout=5)
        assert servicer.last_time_remaining is not None
        assert 0 < servicer.last_time_remaining < 6  # the call's own timeout wins


def test_invalid_argument_carries_field_violations(server: tuple[str, FakeServicer]) -> None:
    target, _ = server
    with RerankClient(target) as client, pytest.raises(RerankError) as caught:
        client.rerank("  ", ["d"])
    error = caught.value
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.message == "2 invalid fields"
    assert error.field_violations == (
        FieldViolation("query", "must not be empty"),
        FieldViolation("width[0].ratio", "must be >= 1"),
    )
    assert error.status is not None
    assert error.status.code == code_pb2.INVALID_ARGUMENT
    assert "query: must not be empty" in str(error)
    assert isinstance(error.__cause__, grpc.RpcError)


def test_retry_info_and_plain_errors(server: tuple[str, FakeServicer]) -> None:
    target, _ = server
    with RerankClient(target) as client:
        with pytest.raises(RerankError) as busy:
            client.rerank("busy", ["d"])
        assert busy.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert busy.value.retry_delay == pytest.approx(2.5)
        with pytest.raises(RerankError) as missing:
            client.rerank("q", ["d"], model="missing")
        assert (missing.value.code, missing.value.field_violations, missing.value.status) == (
            grpc.StatusCode.NOT_FOUND,
            (),
            None,
        )
        with pytest.raises(RerankError) as slow:
            client.rerank("slow", ["d"], timeout=0.05)
        assert slow.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_sync_stream_yields_stages_then_final(server: tuple[str, FakeServicer]) -> None:
    target, _ = server
    with RerankClient(target) as client:
        stages = list(client.stream_rerank("capital of france", DOCS))
    assert [s.layer for s in stages] == [1, 2, 3, 4]
    assert [s.final for s in stages] == [False, False, False, True]
    assert all(d.running for s in stages[:-1] for d in s.results)
    result = stages[-1].result()
    assert result.results[0].id == "paris"
    assert not any(d.running for d in result.results)
    assert result.timing.total_seconds == pytest.approx(0.002)


def test_sync_stream_error_midway_and_early_exit_cancels(server: tuple[str, FakeServicer]) -> None:
    target, servicer = server
    with RerankClient(target) as client:
        seen: list[RerankStage] = []
        with pytest.raises(RerankError) as caught:
            seen.extend(client.stream_rerank("fail midway", ["d"]))
        assert caught.value.code == grpc.StatusCode.INTERNAL
        assert len(seen) == 2
        servicer.cancelled.clear()
        stream = client.stream_rerank("endless", ["d"])
        assert next(stream).layer == 1
        stream.close()  # what leaving a for loop early does once the iterator is dropped
        assert servicer.cancelled.wait(5)


def test_stream_checks_the_request_before_any_call() -> None:
    client = RerankClient("127.0.0.1:1")  # nothing listens there; no call is made
    with pytest.raises(TypeError):
        client.stream_rerank("q", "not a list")
    client.close()


def test_model_info(server: tuple[str, FakeServicer]) -> None:
    target, _ = server
    with RerankClient(target) as client:
        models = client.model_info()
        assert [(m.name, m.family, m.is_default) for m in models] == [
            ("fake", "decoder", True),
            ("enc", "encoder", False),
        ]
        assert [m.name for m in client.model_info("enc")] == ["enc"]
        with pytest.raises(RerankError) as caught:
            client.model_info("nope")
        assert caught.value.code == grpc.StatusCode.NOT_FOUND


def test_client_over_a_callers_channel_leaves_it_open(server: tuple[str, FakeServicer]) -> None:
    target, _ = server
    with grpc.insecure_channel(target) as channel:
        with RerankClient(channel) as client:
            client.rerank("q", ["d"])
        assert RerankClient(channel).rerank("q", ["d"]).results  # still usable after the first client closed


def test_closed_client_refuses_calls(server: tuple[str, FakeServicer]) -> None:
    target, _ = server
    client = RerankClient(target)
    client.close()
    with pytest.raises(ValueError, match="closed"):
        client.rerank("q", ["d"])


def test_async_client(server: tuple[str, FakeServicer]) -> None:
    target, servicer = server

    async def main() -> None:
        async with AsyncRerankClient(target, timeout=30, metadata={"x-tenant": "aio"}) as client:
            result = await client.rerank("capital of france", DOCS, top_n=1)
            assert [d.id for d in result.results] == ["paris"]
            assert servicer.last_metadata["x-tenant"] == "aio"

            stages = [s async for s in client.stream_rerank("capital of france", DOCS)]
            assert [s.final for s in stages] == [False, False, False, True]
            assert stages[-1].result().results[0].id == "paris"

            with pytest.raises(RerankError) as caught:
                await client.rerank("", ["d"])
            assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
            assert caught.value.field_violations[0] == FieldViolation("query", "must not be empty")

            with pytest.raises(RerankError) as midway:
                async for _ in client.stream_rerank("fail midway", ["d"]):
                    pass
            assert midway.value.code == grpc.StatusCode.INTERNAL

            with pytest.raises(RerankError) as slow:
                await client.rerank("slow", ["d"], timeout=0.05)
            assert slow.value.code == grpc.StatusCode.DEADLINE_EXCEEDED

            assert [m.name for m in await client.model_info()] == ["fake", "enc"]

            servicer.cancelled.clear()
            stream = client.stream_rerank("endless", ["d"])
            assert (await anext(stream)).layer == 1
            await stream.aclose()
            assert await asyncio.to_thread(servicer.cancelled.wait, 5)

    asyncio.run(main())
