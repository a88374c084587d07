"""MatryoshkaPostprocessor (clients/llama-index) against a real server on loopback, real SmolLM2 weights."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from llama_index.core.bridge.pydantic import Field
from llama_index.core.callbacks import CallbackManager, CBEventType, EventPayload, LlamaDebugHandler
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle, TextNode
from llama_index.postprocessor.matryoshka import MatryoshkaPostprocessor, MatryoshkaUnavailableError

from matryoshka_client import Chunking, RerankClient
from tests.integration.conftest import ServerProcess, free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"
QUERY = QueryBundle("who wrote romeo and juliet")
DOCS = [
    "The speed of light in vacuum is about 300,000 km per second.",
    "Bananas are rich in potassium.",
    "Romeo and Juliet is a tragedy written by William Shakespeare early in his career.",
    "The stock market fell sharply on Monday.",
]


def retrieved() -> list[NodeWithScore]:
    """The documents as a retriever would hand them over (with retrieval scores)."""
    return [NodeWithScore(node=TextNode(text=d, id_=f"d{i}"), score=10.0 - i) for i, d in enumerate(DOCS)]


def rerank(reranker: MatryoshkaPostprocessor, use_async: bool) -> list[NodeWithScore]:
    """The documents through the sync or the asyncio path."""
    if use_async:
        return asyncio.run(reranker.apostprocess_nodes(retrieved(), QUERY))
    return reranker.postprocess_nodes(retrieved(), QUERY)


class Captured(BaseEventHandler):
    """Keeps every instrumentation event it sees."""

    events: list[BaseEvent] = Field(default_factory=list)

    @classmethod
    def class_name(cls) -> str:
        return "Captured"

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        self.events.append(event)


@pytest.fixture
def captured() -> Iterator[Captured]:
    handler = Captured()
    root = get_dispatcher()
    root.add_event_handler(handler)
    yield handler
    root.event_handlers.remove(handler)


@pytest.mark.parametrize("send_retrieval_scores", [True, False])
def test_sync_and_async_give_the_same_ranking(
    default_server: ServerProcess, send_retrieval_scores: bool
) -> None:
    """With the retriever's scores (sent by default, the server fuses them in, so the order is the fused
    one: retrieved() puts the answer third) and without (the re-ranker's own order: the answer first)."""
    reranker = MatryoshkaPostprocessor(
        target=default_server.target, top_n=4, send_retrieval_scores=send_retrieval_scores
    )
    sync = reranker.postprocess_nodes(retrieved(), QUERY)
    aio = asyncio.run(reranker.apostprocess_nodes(retrieved(), QUERY))
    assert [n.node.node_id for n in sync] == [n.node.node_id for n in aio]
    assert [n.score for n in sync] == pytest.approx([n.score for n in aio], abs=1e-5)
    if send_retrieval_scores:
        return
    assert sync[0].node.node_id == "d2"
    scores = [n.score or 0.0 for n in sync]
    assert scores == sorted(scores, reverse=True)


def test_top_n_scores_and_metadata(default_server: ServerProcess) -> None:
    """Computed (the cache bypassed): other tests on this server send the same documents."""
    reranker = MatryoshkaPostprocessor(
        target=default_server.target,
        top_n=2,
        keep_retrieval_score=True,
        cache_mode="bypass",
        send_retrieval_scores=False,  # as the direct call below: no first-stage scores
    )
    nodes = retrieved()
    ranked = reranker.postprocess_nodes(nodes, QUERY)
    with RerankClient(default_server.target) as client:
        direct = client.rerank(QUERY.query_str, DOCS, top_n=2, cache_mode="bypass")
    assert [n.node.node_id for n in ranked] == [f"d{d.index}" for d in direct.results]
    assert [n.score for n in ranked] == pytest.approx([d.score for d in direct.results], abs=1e-5)
    best = ranked[0].node.metadata
    assert best == {"exit_layer": 30, "exit_reason": "depth", "partial": False, "retrieval_score": 8.0}
    assert nodes[2].node.metadata == {}


def test_events_reach_the_dispatcher_and_the_callback_manager(
    default_server: ServerProcess, captured: Captured
) -> None:
    debug = LlamaDebugHandler()
    reranker = MatryoshkaPostprocessor(
        target=default_server.target, top_n=2, callback_manager=CallbackManager([debug])
    )
    ranked = reranker.postprocess_nodes(retrieved(), QUERY)
    start = [e for e in captured.events if isinstance(e, ReRankStartEvent)]
    end = [e for e in captured.events if isinstance(e, ReRankEndEvent)]
    assert len(start) == len(end) == 1
    assert (start[0].top_n, len(start[0].nodes), start[0].query) == (2, 4, QUERY)
    assert [n.node.node_id for n in end[0].nodes] == [n.node.node_id for n in ranked]
    [(begin, finish)] = debug.get_event_pairs(CBEventType.RERANKING)
    assert begin.payload is not None
    assert finish.payload is not None
    assert begin.payload[EventPayload.QUERY_STR] == QUERY.query_str
    assert begin.payload[EventPayload.TOP_K] == 2
    assert finish.payload[EventPayload.NODES] == ranked


@pytest.mark.parametrize("use_async", [False, True])
def test_empty_input_and_missing_query(default_server: ServerProcess, use_async: bool) -> None:
    reranker = MatryoshkaPostprocessor(target=default_server.target)
    if use_async:
        assert asyncio.run(reranker.apostprocess_nodes([], QUERY)) == []
        with pytest.raises(ValueError, match="needs the query"):
            asyncio.run(reranker.apostprocess_nodes(retrieved()))
    else:
        assert reranker.postprocess_nodes([], QUERY) == []
        with pytest.raises(ValueError, match="needs the query"):
            reranker.postprocess_nodes(retrieved())


@pytest.mark.parametrize("use_async", [False, True])
def test_a_server_that_is_down_is_a_clear_error(use_async: bool) -> None:
    target = f"127.0.0.1:{free_port()}"
    reranker = MatryoshkaPostprocessor(target=target, max_retries=1, retry_backoff=0.01, timeout=5)
    with pytest.raises(MatryoshkaUnavailableError, match=f"server at {target} is unavailable"):
        rerank(reranker, use_async)


def assert_partial(ranked: list[NodeWithScore]) -> None:
    """Every document cut short by the budget, at a head layer before the last."""
    assert len(ranked) == len(DOCS)
    assert all(n.node.metadata["partial"] for n in ranked)
    assert all(n.node.metadata["exit_reason"] == "budget" for n in ranked)
    assert all(n.node.metadata["exit_layer"] < 30 for n in ranked)


def test_a_too_small_flop_budget_returns_the_partial_ranking(default_server: ServerProcess) -> None:
    """The cache is bypassed: earlier tests cached these documents, and a cache hit costs nothing."""
    with RerankClient(default_server.target) as client:
        full = client.rerank(QUERY.query_str, DOCS, cache_mode="bypass")
    reranker = MatryoshkaPostprocessor(
        target=default_server.target, top_n=4, budget_flops=full.usage.flops / 2, cache_mode="bypass"
    )
    assert_partial(reranker.postprocess_nodes(retrieved(), QUERY))
    assert_partial(asyncio.run(reranker.apostprocess_nodes(retrieved(), QUERY)))


def test_a_too_small_time_budget_returns_the_partial_ranking(default_server: ServerProcess) -> None:
    """The first head (layer 15) comes at about half a full run's time: budgets just under a full run
    (the first that the server cuts short) give the ranking so far, not an error. The cache is
    bypassed: these documents are cached by earlier tests, and a cache hit takes no time."""
    with RerankClient(default_server.target) as client:
        full = client.rerank(QUERY.query_str, DOCS, cache_mode="bypass").timing.total_seconds
    for fraction in (0.9, 0.8, 0.7):
        budget = timedelta(seconds=full * fraction)
        ranked = MatryoshkaPostprocessor(
            target=default_server.target, top_n=4, budget=budget, cache_mode="bypass"
        ).postprocess_nodes(retrieved(), QUERY)
        if ranked[0].node.metadata["partial"]:
            break
    assert_partial(ranked)


def test_chunked_nodes_carry_the_window_that_decided_their_score(default_server: ServerProcess) -> None:
    """A long node whose answer sits in a middle window: its metadata cites that window, cut from the
    text the server read; min_score between the best two scores keeps the best node only."""
    filler = "Bananas are rich in potassium. " * 8 + "The stock market fell sharply on Monday. " * 8
    nodes = [
        NodeWithScore(node=TextNode(text=f"{filler}{DOCS[2]} {filler}", id_="long"), score=1.0),
        *(NodeWithScore(node=TextNode(text=DOCS[i], id_=f"d{i}"), score=0.5) for i in (0, 1, 3)),
    ]
    options: dict[str, Any] = {
        "target": default_server.target,
        "top_n": 4,
        "chunking": Chunking(window_tokens=32, overlap_tokens=8),
        "send_retrieval_scores": False,  # scores here are the re-ranker's alone
    }
    ranked = MatryoshkaPostprocessor(**options, cache_mode="bypass").postprocess_nodes(nodes, QUERY)
    assert ranked[0].node.node_id == "long"
    meta = ranked[0].node.metadata
    read = nodes[0].node.get_content(metadata_mode=MetadataMode.EMBED)
    assert meta["window_text"] == read[meta["window_start"] : meta["window_end"]]
    assert "William Shakespeare" in meta["window_text"]
    assert 0 < meta["window_index"] < meta["window_count"] - 1
    assert all(n.node.metadata["window_count"] == 1 for n in ranked[1:])  # short nodes: one window
    floor = ((ranked[0].score or 0.0) + (ranked[1].score or 0.0)) / 2
    kept = asyncio.run(MatryoshkaPostprocessor(**options, min_score=floor).apostprocess_nodes(nodes, QUERY))
    assert [n.node.node_id for n in kept] == ["long"]
    assert kept[0].node.metadata["window_text"] == meta["window_text"]


def test_the_rag_example_runs_end_to_end(default_server: ServerProcess) -> None:
    if not (DATA / "cranfield" / "corpus.jsonl").exists():
        pytest.skip(f"needs the cranfield collection in {DATA}")
    example = ROOT / "clients" / "llama-index" / "examples" / "rag_pipeline.py"
    env = {**os.environ, "MATRYOSHKA_TARGET": default_server.target, "MATRYOSHKA_DATA": str(DATA)}
    run = subprocess.run(
        [sys.executable, str(example), "--docs", "200", "--queries", "2", "--candidates", "6"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith("200 documents from")
    assert sum(line.startswith("query: ") for line in lines) == 2
    sources = [line for line in lines if "exit_layer" in line]
    assert len(sources) == 2 * 3
    assert any(" * doc " in line for line in sources)  # a judged-relevant document made the top 3
