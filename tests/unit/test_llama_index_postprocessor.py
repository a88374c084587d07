"""MatryoshkaPostprocessor without a model: validation, and a scripted in-process gRPC server on loopback
for retries, errors, call metadata and TLS."""

from __future__ import annotations

import asyncio
import math
import shutil
import subprocess
import time
from collections.abc import Iterator
from concurrent import futures
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
from llama_index.postprocessor.matryoshka import (
    MatryoshkaConfigurationError,
    MatryoshkaDeadlineError,
    MatryoshkaPostprocessor,
    MatryoshkaUnavailableError,
)

from matryoshka_client.proto import rerank_service_pb2 as pb
from matryoshka_client.proto import rerank_service_pb2_grpc as pb_grpc

NODES = [NodeWithScore(node=TextNode(text=f"document {i}"), score=float(i)) for i in range(4)]
QUERY = QueryBundle("which document?")


class ScriptedRerank(pb_grpc.RerankServiceServicer):
    """Fails with `failures` in turn, then ranks documents in reverse order (scored i / n), drops those
    under min_score and, when chunked, names each one's last `window_tokens` code points as its window;
    records each call's metadata and request."""

    def __init__(self, failures: list[grpc.StatusCode] | None = None, delay: float = 0.0) -> None:
        self.failures = list(failures or [])
        self.delay = delay
        self.calls: list[dict[str, Any]] = []
        self.requests: list[pb.RerankRequest] = []

    def Rerank(self, request: pb.RerankRequest, context: grpc.ServicerContext) -> pb.RerankResponse:  # noqa: N802
        self.calls.append(dict(context.invocation_metadata()))
        self.requests.append(request)
        if self.failures:
            context.abort(self.failures.pop(0), "scripted failure")
        time.sleep(self.delay)
        n = len(request.documents)
        ranked = [
            pb.RerankResult(index=i, score=i / n, exit_layer=7, exit_reason=pb.EXIT_REASON_DEPTH)
            for i in reversed(range(n))
            if not request.HasField("min_score") or i / n >= request.min_score
        ]
        if request.HasField("chunking"):
            for r in ranked:
                end = len(request.documents[r.index].text)
                start = max(end - request.chunking.window_tokens, 0)
                r.window.CopyFrom(pb.Window(index=1, count=2, start=start, end=end))
        return pb.RerankResponse(results=ranked[: request.top_n or n], model="scripted")


def serve(servicer: ScriptedRerank, credentials: grpc.ServerCredentials | None = None) -> tuple[Any, str]:
    """A started server on a free loopback port, and its target."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_RerankServiceServicer_to_server(servicer, server)
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    return server, f"127.0.0.1:{port}"


@pytest.fixture
def scripted() -> Iterator[tuple[ScriptedRerank, str]]:
    servicer = ScriptedRerank()
    server, target = serve(servicer)
    yield servicer, target
    server.stop(None)


def rerank(reranker: MatryoshkaPostprocessor, use_async: bool) -> list[NodeWithScore]:
    """Through the sync or the asyncio path."""
    if use_async:
        return asyncio.run(reranker.apostprocess_nodes(NODES, QUERY))
    return reranker.postprocess_nodes(NODES, QUERY)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"top_n": 0}, "top_n"),
        ({"budget": -1}, "budget must be a positive"),
        ({"budget": math.nan}, "budget must be a positive"),
        ({"budget": timedelta(0)}, "budget must be a positive"),
        ({"budget_flops": 0}, "budget_flops"),
        ({"timeout": 0}, "timeout"),
        ({"depth": 0}, "depth"),
        ({"early_exit": {"relevant": 1.5}}, "early_exit.relevant is a probability"),
        ({"early_exit": {"min_layer": -1}}, "early_exit.min_layer"),
        ({"cascade": {"margin": -0.1}}, "cascade.margin"),
        ({"first_stage_top_n": 0}, "first_stage_top_n"),
        ({"width": [{"layer": 3}]}, "set exactly one of ratio or length"),
        ({"width": [{"layer": 0, "ratio": 2.0}]}, "1-based"),
        ({"width": [{"layer": 3, "ratio": 0.5}]}, "ratio must be >= 1"),
        ({"cache_mode": "sometimes"}, "cache_mode"),
        ({"max_retries": -1}, "max_retries"),
        ({"chunking": {"window_tokens": 0}}, "chunking.window_tokens must be >= 1"),
        ({"chunking": {"window_tokens": 8, "overlap_tokens": 8}}, r"overlap_tokens must be in \[0, window"),
        ({"chunking": {"window_tokens": 8, "overlap_tokens": -1}}, r"overlap_tokens must be in \[0, window"),
        ({"chunking": {"window_tokens": 8, "aggregate": "maxp"}}, "'max', 'first' or 'mean'"),
        ({"min_score": 1.5}, "min_score"),
        ({"min_score": -0.1}, "min_score"),
        ({"root_certificates": "/no/such/roots.pem"}, "root_certificates"),
        ({"target": ""}, "target"),
    ],
)
def test_bad_options_fail_at_construction(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MatryoshkaPostprocessor(**options)


def test_good_options_reach_the_request() -> None:
    reranker = MatryoshkaPostprocessor(
        budget=timedelta(milliseconds=250), budget_flops=1e9, early_exit={"relevant": 0.9}, depth=20
    )
    options = reranker._options()
    assert options["budget"] is not None
    assert options["budget"].max_latency_seconds == 0.25
    assert options["budget"].max_flops == 1e9
    assert options["confidence"] is not None
    assert options["confidence"].relevant == 0.9
    assert (options["depth"], options["top_n"]) == (20, 2)
    assert (options["chunking"], options["min_score"]) == (None, None)
    assert options["first_stage_top_n"] is None
    assert MatryoshkaPostprocessor(first_stage_top_n=50)._options()["first_stage_top_n"] == 50


@pytest.mark.parametrize("use_async", [False, True])
def test_empty_input_and_missing_query_make_no_call(
    scripted: tuple[ScriptedRerank, str], use_async: bool
) -> None:
    servicer, target = scripted
    reranker = MatryoshkaPostprocessor(target=target)
    if use_async:
        assert asyncio.run(reranker.apostprocess_nodes([], QUERY)) == []
        with pytest.raises(ValueError, match="needs the query"):
            asyncio.run(reranker.apostprocess_nodes(NODES))
    else:
        assert reranker.postprocess_nodes([], QUERY) == []
        with pytest.raises(ValueError, match="needs the query"):
            reranker.postprocess_nodes(NODES)
    assert servicer.calls == []


@pytest.mark.parametrize("use_async", [False, True])
@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED])
def test_transient_codes_are_retried(code: grpc.StatusCode, use_async: bool) -> None:
    servicer = ScriptedRerank([code, code])
    server, target = serve(servicer)
    try:
        reranker = MatryoshkaPostprocessor(target=target, top_n=4, max_retries=2, retry_backoff=0.01)
        ranked = rerank(reranker, use_async)
    finally:
        server.stop(None)
    assert len(servicer.calls) == 3
    assert [n.node.get_content() for n in ranked] == [f"document {i}" for i in (3, 2, 1, 0)]


@pytest.mark.parametrize("use_async", [False, True])
@pytest.mark.parametrize(
    ("code", "what"),
    [(grpc.StatusCode.UNAVAILABLE, "is unavailable"), (grpc.StatusCode.RESOURCE_EXHAUSTED, "is overloaded")],
)
def test_retries_are_bounded(code: grpc.StatusCode, what: str, use_async: bool) -> None:
    servicer = ScriptedRerank([code] * 10)
    server, target = serve(servicer)
    try:
        reranker = MatryoshkaPostprocessor(target=target, max_retries=3, retry_backoff=0.01)
        with pytest.raises(MatryoshkaUnavailableError, match=f"{target} {what}.*after 4 attempts") as err:
            rerank(reranker, use_async)
    finally:
        server.stop(None)
    assert len(servicer.calls) == 4
    assert err.value.code == code
    assert isinstance(err.value, ConnectionError)


@pytest.mark.parametrize("use_async", [False, True])
def test_a_rejected_request_is_a_configuration_error_and_not_retried(use_async: bool) -> None:
    servicer = ScriptedRerank([grpc.StatusCode.INVALID_ARGUMENT])
    server, target = serve(servicer)
    try:
        reranker = MatryoshkaPostprocessor(target=target, retry_backoff=0.01)
        with pytest.raises(MatryoshkaConfigurationError, match="rejected the request's configuration"):
            rerank(reranker, use_async)
    finally:
        server.stop(None)
    assert len(servicer.calls) == 1


@pytest.mark.parametrize("use_async", [False, True])
def test_a_passed_deadline_is_a_deadline_error(use_async: bool) -> None:
    servicer = ScriptedRerank(delay=1.0)
    server, target = serve(servicer)
    try:
        reranker = MatryoshkaPostprocessor(target=target, timeout=0.2)
        with pytest.raises(MatryoshkaDeadlineError, match=r"passed its 0.2s deadline.*budget") as err:
            rerank(reranker, use_async)
    finally:
        server.stop(None)
    assert isinstance(err.value, TimeoutError)
    assert len(servicer.calls) == 1


@pytest.mark.parametrize("use_async", [False, True])
def test_results_map_back_by_index_with_exit_metadata(
    scripted: tuple[ScriptedRerank, str], use_async: bool
) -> None:
    _, target = scripted
    reranker = MatryoshkaPostprocessor(target=target, top_n=2, keep_retrieval_score=True)
    ranked = rerank(reranker, use_async)
    assert [n.node.node_id for n in ranked] == [NODES[3].node.node_id, NODES[2].node.node_id]
    assert [n.score for n in ranked] == [0.75, 0.5]
    meta = ranked[0].node.metadata
    assert meta == {"exit_layer": 7, "exit_reason": "depth", "partial": False, "retrieval_score": 3.0}
    assert "exit_layer" not in ranked[0].node.get_content(metadata_mode="llm")
    assert NODES[3].node.metadata == {}  # the retriever's nodes are left as they were


@pytest.mark.parametrize("use_async", [False, True])
def test_the_bearer_token_goes_with_every_call(scripted: tuple[ScriptedRerank, str], use_async: bool) -> None:
    servicer, target = scripted
    reranker = MatryoshkaPostprocessor(target=target, auth_token="s3cret")
    rerank(reranker, use_async)
    assert servicer.calls[0]["authorization"] == "Bearer s3cret"
    assert "s3cret" not in repr(reranker)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
@pytest.mark.parametrize("use_async", [False, True])
def test_tls_with_root_certificates(tmp_path: Path, use_async: bool) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    servicer = ScriptedRerank()
    server, target = serve(servicer, grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())]))
    try:
        ranked = rerank(MatryoshkaPostprocessor(target=target, root_certificates=cert), use_async)
        with pytest.raises(MatryoshkaUnavailableError):  # plaintext to a TLS port
            rerank(MatryoshkaPostprocessor(target=target, max_retries=0), use_async)
    finally:
        server.stop(None)
    assert len(ranked) == 2


@pytest.mark.parametrize("use_async", [False, True])
def test_retrieval_scores_go_as_first_stage_scores(
    scripted: tuple[ScriptedRerank, str], use_async: bool
) -> None:
    servicer, target = scripted
    rerank(MatryoshkaPostprocessor(target=target), use_async)
    sent = servicer.requests[-1].documents
    assert [(d.HasField("first_stage_score"), d.first_stage_score) for d in sent] == [
        (True, float(i)) for i in range(4)
    ]
    rerank(MatryoshkaPostprocessor(target=target, send_retrieval_scores=False), use_async)
    assert not any(d.HasField("first_stage_score") for d in servicer.requests[-1].documents)


@pytest.mark.parametrize("missing", [None, math.nan, -math.inf])
def test_no_first_stage_scores_unless_every_node_has_a_finite_one(
    scripted: tuple[ScriptedRerank, str], missing: float | None
) -> None:
    servicer, target = scripted
    nodes = [*NODES[:3], NodeWithScore(node=TextNode(text="unscored"), score=missing)]
    ranked = MatryoshkaPostprocessor(target=target, top_n=4).postprocess_nodes(nodes, QUERY)
    assert len(ranked) == 4
    assert not any(d.HasField("first_stage_score") for d in servicer.requests[-1].documents)


@pytest.mark.parametrize("use_async", [False, True])
def test_chunked_results_carry_their_window_in_metadata(
    scripted: tuple[ScriptedRerank, str], use_async: bool
) -> None:
    servicer, target = scripted
    reranker = MatryoshkaPostprocessor(
        target=target,
        top_n=4,
        chunking={"window_tokens": 5, "overlap_tokens": 2, "aggregate": "mean"},
        min_score=0.5,
        metadata_mode="none",
    )
    ranked = rerank(reranker, use_async)
    sent = servicer.requests[-1]
    assert (sent.chunking.window_tokens, sent.chunking.overlap_tokens) == (5, 2)
    assert sent.chunking.aggregate == pb.AGGREGATE_MEAN
    assert (sent.HasField("min_score"), sent.min_score) == (True, 0.5)
    assert [n.node.node_id for n in ranked] == [
        NODES[3].node.node_id,
        NODES[2].node.node_id,
    ]  # 0.25 and 0 < 0.5
    meta = ranked[0].node.metadata
    window = {k: meta[k] for k in ("window_index", "window_count", "window_start", "window_end")}
    assert window == {"window_index": 1, "window_count": 2, "window_start": 5, "window_end": 10}
    assert meta["window_text"] == "ent 3"  # "document 3"[5:10]
    assert "window_text" not in ranked[0].node.get_content(metadata_mode="llm")
    assert "window_text" in ranked[0].node.excluded_embed_metadata_keys


@pytest.mark.parametrize("use_async", [False, True])
def test_unchunked_results_have_no_window_metadata(
    scripted: tuple[ScriptedRerank, str], use_async: bool
) -> None:
    servicer, target = scripted
    ranked = rerank(MatryoshkaPostprocessor(target=target), use_async)
    assert not servicer.requests[-1].HasField("chunking")
    assert not servicer.requests[-1].HasField("min_score")
    assert not any(k.startswith("window_") for n in ranked for k in n.node.metadata)


def test_window_offsets_are_into_the_text_the_server_read(scripted: tuple[ScriptedRerank, str]) -> None:
    servicer, target = scripted
    nodes = [NodeWithScore(node=TextNode(text="body text", metadata={"title": "Intro"}), score=1.0)]
    reranker = MatryoshkaPostprocessor(target=target, chunking={"window_tokens": 100})  # metadata_mode EMBED
    [ranked] = reranker.postprocess_nodes(nodes, QUERY)
    sent = servicer.requests[-1].documents[0].text
    assert "title: Intro" in sent  # the default metadata_mode puts metadata into the text re-ranked
    meta = ranked.node.metadata
    assert (meta["window_start"], meta["window_end"], meta["window_text"]) == (0, len(sent), sent)
