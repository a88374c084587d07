"""The gRPC service end to end: real server processes on loopback, real SmolLM2 weights."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from matryoshka_client import Budget, RerankClient, RerankError, Truncation, WidthStep
from matryoshka_client.proto import rerank_service_pb2 as pb
from matryoshka_client.proto import rerank_service_pb2_grpc as pb_grpc
from tests.integration.conftest import ServerProcess, free_port, launch

pytestmark = pytest.mark.slow

QUERY = "who wrote romeo and juliet"
DOCS = [
    "The speed of light in vacuum is about 300,000 km per second.",
    "Bananas are rich in potassium.",
    "Romeo and Juliet is a tragedy written by William Shakespeare early in his career.",
    "The stock market fell sharply on Monday.",
]
LONG_DOC = " ".join(["Rivers carry water from mountains to the sea through valleys and plains."] * 12)
QUEUE_SIZE = 'matryoshka_queue_size{model="smollm2-135m"}'  # every metric is labelled by the served model


def test_rerank_ranks_the_answer_first(default_server: ServerProcess) -> None:
    """Computed (the cache bypassed): other tests on this server send the same documents."""
    with RerankClient(default_server.target) as client:
        result = client.rerank(QUERY, DOCS, request_id="r-1", cache_mode="bypass")
    assert result.results[0].index == 2
    assert sorted(d.index for d in result.results) == [0, 1, 2, 3]
    assert all(d.exit_layer == 30 and d.exit_reason == "depth" for d in result.results)
    assert result.model == "smollm2-135m"
    assert result.request_id == "r-1"
    assert result.usage.flops > 0
    assert not result.partial
    assert all(d.document is None for d in result.results)


def test_top_n_and_return_documents(default_server: ServerProcess) -> None:
    with RerankClient(default_server.target) as client:
        result = client.rerank(
            QUERY, [("a", DOCS[0]), ("b", DOCS[2]), ("c", DOCS[1])], top_n=1, return_documents=True
        )
    assert len(result.results) == 1
    best = result.results[0]
    assert (best.index, best.id, best.document) == (1, "b", DOCS[2])


def test_depth_and_width_cut_cost(default_server: ServerProcess) -> None:
    with RerankClient(default_server.target) as client:
        full = client.rerank(QUERY, DOCS)
        cut = client.rerank(QUERY, DOCS, depth=20, width=[WidthStep(8, ratio=2.0)])
    assert all(d.exit_layer == 20 for d in cut.results)
    assert cut.usage.flops_saved > 0.3 > full.usage.flops_saved


def test_stream_rerank_sends_stages_then_a_final_answer(heads_server: ServerProcess) -> None:
    with RerankClient(heads_server.target) as client:
        stages = list(  # computed (the cache bypassed): a cache hit would have no stages
            client.stream_rerank(QUERY, DOCS, depth=6, budget=Budget(max_flops=1e15), cache_mode="bypass")
        )
    assert len(stages) >= 2
    *progress, final = stages
    assert final.final
    assert not any(s.final for s in progress)
    assert [s.layer for s in progress] == sorted(s.layer for s in progress)
    assert all(len(s.results) == len(DOCS) for s in stages)
    assert final.usage is not None
    assert final.usage.flops > 0
    assert all(d.exit_reason for d in final.results)


def test_get_model_info(default_server: ServerProcess) -> None:
    with RerankClient(default_server.target) as client:
        (info,) = client.model_info()
    assert (info.name, info.num_layers, info.is_default) == ("smollm2-135m", 30, True)
    assert info.dtype == "float32"  # the tests' servers set MATRYOSHKA_DTYPE=float32
    assert len(info.fingerprint) == 64
    # the shipped artifact's budget plan (docs/results.md, issue #17): the first stage's top 50 run
    assert info.budget_plan == "adaptive: full depth, first stage top 50"


def test_reflection_lists_the_service(default_server: ServerProcess) -> None:
    with grpc.insecure_channel(default_server.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (reply,) = list(stub.ServerReflectionInfo(iter([request]), timeout=10))
    names = {s.name for s in reply.list_services_response.service}
    assert {"matryoshka.v1.RerankService", "grpc.health.v1.Health"} <= names


BAD_INPUTS = [
    ("empty query", {"query": "  "}, "query"),
    ("no documents", {"documents": []}, "documents"),
    ("too many documents", {"documents": ["x"] * 65}, "documents"),
    ("1 MB document", {"documents": ["a" * (1 << 20)]}, "documents[0].text"),
    ("depth beyond the model", {"depth": 31}, "depth"),
    ("increasing widths", {"width": [WidthStep(4, length=40), WidthStep(8, length=60)]}, "width[1].length"),
    ("ratio below one", {"width": [WidthStep(4, ratio=0.5)]}, "width[0].ratio"),
]


@pytest.mark.parametrize(("case", "change", "field"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_invalid_argument_naming_the_field(
    heads_server: ServerProcess, case: str, change: dict, field: str
) -> None:
    args = {"query": QUERY, "documents": DOCS, **change}
    query, documents = args.pop("query"), args.pop("documents")
    with RerankClient(heads_server.target) as client:
        with pytest.raises(RerankError) as err:
            client.rerank(query, documents, **args)
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT, case
        assert field in {v.field for v in err.value.field_violations}, err.value.field_violations
        assert client.rerank(QUERY, DOCS[:2], depth=2).results  # still serving


def test_nan_threshold_is_invalid_argument(heads_server: ServerProcess) -> None:
    request = pb.RerankRequest(query=QUERY, documents=[pb.Document(text=d) for d in DOCS])
    request.early_exit.confidence.relevant = math.nan
    with grpc.insecure_channel(heads_server.target) as channel, pytest.raises(grpc.RpcError) as err:
        pb_grpc.RerankServiceStub(channel).Rerank(request, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "early_exit.confidence.relevant" in err.value.details()


def test_a_short_deadline_returns_partial_results(heads_server: ServerProcess) -> None:
    """A 300 ms deadline on a request that needs several times longer: partial results, in time.

    The batch is sized to this machine so that one layer takes a small part of the deadline (the
    first head is reached well before it) while all 30 layers take much longer than the deadline.
    The cache is bypassed: the probes repeat documents, and a cache hit would need no time at all.
    """
    short = Truncation(max_document_tokens=24)
    with RerankClient(heads_server.target) as client:
        for count in (16, 8, 4):
            documents = [f"{i} {LONG_DOC}" for i in range(count)]
            full = client.rerank(QUERY, documents, truncation=short, timeout=120, cache_mode="bypass")
            if full.timing.compute_seconds / 30 < 0.06:
                break
        assert full.timing.compute_seconds > 0.6, "the full request must need longer than the deadline"
        quick = client.rerank(QUERY, documents, truncation=short, timeout=0.3, cache_mode="bypass")
    assert quick.partial
    assert len(quick.results) == len(documents)
    assert all(d.exit_reason == "budget" for d in quick.results)
    assert all(d.exit_layer < 30 for d in quick.results)


def test_cancellation_frees_the_engine(heads_server: ServerProcess) -> None:
    """A cancelled 48-document request leaves the engine within a step, not when its run would end.
    The cache is bypassed: the 48 documents repeat the 8 timed first, which would be cache hits."""
    documents = [f"{i} {LONG_DOC}" for i in range(48)]
    with RerankClient(heads_server.target) as client:
        eight = client.rerank(QUERY, documents[:8], depth=30, timeout=300, cache_mode="bypass")
    whole_run = 6 * eight.timing.compute_seconds  # the 48-document request would take about this long
    with grpc.insecure_channel(heads_server.target) as channel:
        stub = pb_grpc.RerankServiceStub(channel)
        request = pb.RerankRequest(
            query=QUERY, documents=[pb.Document(text=d) for d in documents], cache_mode=pb.CACHE_MODE_BYPASS
        )
        future = stub.Rerank.future(request, timeout=300)
        wait_for_gauge(heads_server, QUEUE_SIZE, lambda v: v == 1)  # it is in the engine
        time.sleep(0.5)
        assert future.cancel()
        cancelled = time.monotonic()
        wait_for_gauge(heads_server, QUEUE_SIZE, lambda v: v == 0)
        freed = time.monotonic() - cancelled
        small = stub.Rerank(
            pb.RerankRequest(query=QUERY, documents=[pb.Document(text=DOCS[2])], depth=2), timeout=60
        )
    assert len(small.results) == 1
    assert freed < whole_run / 4, (freed, whole_run)


def test_health_transitions_and_sigterm_drain() -> None:
    server = launch(
        MATRYOSHKA_SCORING="heads", MATRYOSHKA_METRICS_PORT=str(free_port()), MATRYOSHKA_DRAIN_SECONDS="120"
    )
    try:
        seen = server.wait_serving()
        assert seen[-1] == health_pb2.HealthCheckResponse.SERVING
        assert health_pb2.HealthCheckResponse.NOT_SERVING in seen, seen  # bound before the model was warm
        outcome: dict[str, object] = {}

        def in_flight() -> None:
            with RerankClient(server.target) as client:
                try:
                    outcome["result"] = client.rerank(
                        QUERY, [f"{i} {LONG_DOC}" for i in range(12)], timeout=120
                    )
                    outcome["answered"] = time.monotonic()
                except RerankError as exc:
                    outcome["error"] = exc

        worker = threading.Thread(target=in_flight)
        worker.start()
        wait_for_gauge(server, QUEUE_SIZE, lambda v: v == 1)  # the request is in the engine
        time.sleep(0.3)
        with grpc.insecure_channel(server.target) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=60)
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            assert "answered" not in outcome  # still in flight when the signal comes
            signalled = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        worker.join(120)
        assert "result" in outcome, outcome
        assert outcome["answered"] > signalled  # type: ignore[operator]
        assert len(outcome["result"].results) == 12  # type: ignore[attr-defined]
        assert server.process.wait(60) == 0
    finally:
        server.stop()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "matryoshka", "rerank", *args], capture_output=True, text=True, timeout=120
    )


def test_cli_rerank_through_the_server(heads_server: ServerProcess) -> None:
    ok = cli("--target", heads_server.target, "--depth", "4", "--json", QUERY, *DOCS)
    assert ok.returncode == 0, ok.stderr
    payload = json.loads(ok.stdout)
    assert sorted(r["index"] for r in payload["results"]) == [0, 1, 2, 3]
    assert {r["exit_layer"] for r in payload["results"]} == {4}
    bad = cli("--target", heads_server.target, "--depth", "99", "--width", "2:0.5", QUERY, *DOCS)
    assert bad.returncode != 0
    assert "INVALID_ARGUMENT" in bad.stderr
    assert "depth:" in bad.stderr
    assert "width[0].ratio:" in bad.stderr


def scrape(server: ServerProcess) -> dict[str, float]:
    """The server's metrics: sample line (name with labels) -> value."""
    port = int(server.env["MATRYOSHKA_METRICS_PORT"])
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    samples = (line.rsplit(" ", 1) for line in body.splitlines() if line and not line.startswith("#"))
    return {name: float(value) for name, value in samples}


def wait_for_gauge(
    server: ServerProcess, name: str, ok: Callable[[float], bool], timeout: float = 60
) -> None:
    """Poll the metrics until `name` satisfies `ok`."""
    deadline = time.monotonic() + timeout
    while not ok(scrape(server).get(name, math.nan)):
        assert time.monotonic() < deadline, f"{name} never reached the expected value"
        time.sleep(0.02)


def test_metrics_count_requests_and_exit_layers(heads_server: ServerProcess) -> None:
    bucket = 'matryoshka_exit_layer_bucket{le="3.0",model="smollm2-135m"}'
    ok = 'matryoshka_requests_total{code="OK",method="Rerank",model="smollm2-135m"}'
    before = scrape(heads_server)
    with RerankClient(heads_server.target) as client, ThreadPoolExecutor(1) as pool:
        running = pool.submit(client.rerank, QUERY, [f"{i} {LONG_DOC}" for i in range(6)], timeout=300)
        wait_for_gauge(heads_server, QUEUE_SIZE, lambda v: v == 1)  # in flight: counted
        running.result(300)
        client.rerank(QUERY, DOCS, depth=3)
    after = scrape(heads_server)
    assert after[bucket] - before.get(bucket, 0) == len(DOCS)  # the depth-3 request's documents
    assert after[ok] - before.get(ok, 0) == 2
    assert after[QUEUE_SIZE] == 0  # answered: counted out
