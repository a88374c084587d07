"""Long documents through a real server (SmolLM2 weights): chunking finds an answer past the first
1,000 tokens and says where it is; window caps and min_score answer as the contract says; windows go
through the cache and stream stages rank documents."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from matryoshka_client.proto import rerank_service_pb2 as pb
from matryoshka_client.proto import rerank_service_pb2_grpc as pb_grpc
from tests.integration.conftest import ServerProcess

pytestmark = pytest.mark.slow

QUERY = "who wrote romeo and juliet"
FILLER = "Rivers carry water from mountains to the sea through valleys and plains. " * 90  # ~1,150 tokens
ANSWER = "Romeo and Juliet is a tragedy written by William Shakespeare early in his career."
LONG = FILLER + ANSWER + " The river delta is wide and flat."
DOCS = [
    "Juliet is a popular name for girls in Italy.",  # scores above river filler, below the answer
    LONG,
    "Bananas are rich in potassium.",
    "The stock market fell sharply on Monday.",
]
CHUNKING = pb.Chunking(window_tokens=128, overlap_tokens=32)


@pytest.fixture(scope="module")
def stub(default_server: ServerProcess) -> Iterator[pb_grpc.RerankServiceStub]:
    with grpc.insecure_channel(default_server.target) as channel:
        yield pb_grpc.RerankServiceStub(channel)


def request(docs: list[str], **fields: object) -> pb.RerankRequest:
    return pb.RerankRequest(query=QUERY, documents=[pb.Document(text=t) for t in docs], **fields)


def violations(error: grpc.RpcError) -> dict[str, str]:
    status: status_pb2.Status | None = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    out: dict[str, str] = {}
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            out.update({v.field: v.description for v in bad.field_violations})
    return out


def test_an_answer_past_the_first_1000_tokens_ranks_first_only_with_chunking(
    stub: pb_grpc.RerankServiceStub,
) -> None:
    cut = stub.Rerank(request(DOCS, cache_mode=pb.CACHE_MODE_BYPASS), timeout=600)
    assert cut.results[0].index != 1
    assert not cut.results[0].HasField("window")
    chunked = stub.Rerank(request(DOCS, chunking=CHUNKING, cache_mode=pb.CACHE_MODE_BYPASS), timeout=600)
    best = chunked.results[0]
    assert best.index == 1, chunked.results
    w = best.window
    at = LONG.index(ANSWER)
    assert w.start <= at < w.end, (w, LONG[w.start : w.end])  # the window holds the sentence's start
    assert "Romeo and Juliet is a tragedy written by William Shakespeare" in LONG[w.start : w.end]
    assert w.index * (128 - 32) >= 1000  # the window starts past the first 1,000 tokens
    assert w.count > w.index
    assert chunked.usage.rows > len(DOCS) == cut.usage.rows
    short = next(r for r in chunked.results if r.index == 2)
    assert (short.window.index, short.window.count, short.window.start, short.window.end) == (
        0,
        1,
        0,
        len(DOCS[2]),
    )


def test_window_caps_and_bad_chunking_answer_invalid_argument_naming_every_field(
    stub: pb_grpc.RerankServiceStub,
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.Rerank(
            request(
                DOCS, chunking=pb.Chunking(window_tokens=0, overlap_tokens=-1, aggregate=9), min_score=1.5
            ),
            timeout=60,
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = violations(caught.value)
    assert {"chunking.window_tokens", "chunking.overlap_tokens", "chunking.aggregate", "min_score"} <= set(
        fields
    )
    # 1-token windows: the long document is over 64 windows; 20 copies are over 1,000 in all
    with pytest.raises(grpc.RpcError) as caught:
        stub.Rerank(request(DOCS, chunking=pb.Chunking(window_tokens=1)), timeout=60)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = violations(caught.value)
    assert set(fields) == {"documents[1].text", "chunking"}, fields
    assert "at most 64" in fields["documents[1].text"]
    many = [" ".join(["water"] * 60)] * 20
    with pytest.raises(grpc.RpcError) as caught:
        stub.Rerank(request(many, chunking=pb.Chunking(window_tokens=1)), timeout=60)
    assert set(violations(caught.value)) == {"chunking"}
    info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=60).models[0]
    assert (info.limits.max_windows_per_document, info.limits.max_windows_per_request) == (64, 1000)


def test_min_score_drops_what_is_below_it_with_and_without_top_n(stub: pb_grpc.RerankServiceStub) -> None:
    docs = [DOCS[0], ANSWER, DOCS[2], DOCS[3]]
    every = stub.Rerank(request(docs), timeout=600).results
    probs = {r.index: r.score for r in every}
    floor = sorted(probs.values())[1] + 1e-9  # keeps all but the two lowest
    kept = stub.Rerank(request(docs, min_score=floor), timeout=600).results
    assert [r.index for r in kept] == [r.index for r in every if r.score >= floor]
    assert len(kept) == 2
    one = stub.Rerank(request(docs, min_score=floor, top_n=1), timeout=600).results
    assert [r.index for r in one] == [every[0].index]
    logits = stub.Rerank(request(docs, min_score=floor, score_type=pb.SCORE_TYPE_LOGIT), timeout=600).results
    assert [r.index for r in logits] == [r.index for r in kept]  # the floor is a probability
    assert stub.Rerank(request(docs, min_score=1.0), timeout=600).results == []


def test_a_second_identical_chunked_request_is_answered_from_the_cache(
    stub: pb_grpc.RerankServiceStub,
) -> None:
    docs = ["Juliet loved Romeo. " * 60, "A short note about cheese."]
    req = request(
        docs, chunking=pb.Chunking(window_tokens=96, overlap_tokens=16, aggregate=pb.AGGREGATE_MEAN)
    )
    first = stub.Rerank(req, timeout=600)
    assert first.usage.cache_hits == 0
    for _ in range(50):  # write-backs land just after the answer: retry briefly until a full hit
        again = stub.Rerank(req, timeout=600)
        if again.usage.cache_hits == again.usage.rows:
            break
        time.sleep(0.05)
    assert first.usage.rows == again.usage.rows > 2
    assert again.usage.cache_hits == again.usage.rows
    assert again.usage.flops == 0
    assert [(r.index, r.window.index) for r in again.results] == [
        (r.index, r.window.index) for r in first.results
    ]
    assert [r.score for r in again.results] == pytest.approx([r.score for r in first.results], abs=1e-5)
    assert all(r.exit_reason == pb.EXIT_REASON_CACHE_HIT for r in again.results)


def test_stream_stages_rank_documents_not_windows(heads_server: ServerProcess) -> None:
    with grpc.insecure_channel(heads_server.target) as channel:
        stub = pb_grpc.RerankServiceStub(channel)
        budget = pb.Budget(max_flops=1e15)  # scored at every head layer: a stage each
        req = request(DOCS, chunking=CHUNKING, depth=6, budget=budget, cache_mode=pb.CACHE_MODE_BYPASS)
        stages = list(stub.StreamRerank(pb.StreamRerankRequest(request=req), timeout=600))
    assert len(stages) >= 2
    assert stages[-1].final
    assert stages[-1].usage.rows > len(DOCS)
    assert not any(s.final for s in stages[:-1])
    for stage in stages:
        assert sorted(r.index for r in stage.results) == [0, 1, 2, 3]
        assert all(r.HasField("window") for r in stage.results)
    long_windows = {r.window.count for s in stages for r in s.results if r.index == 1}
    assert len(long_windows) == 1
    assert long_windows.pop() > 10


def test_cli_rerank_chunks_through_the_server(heads_server: ServerProcess) -> None:
    args = ["--target", heads_server.target, "--depth", "4", "--chunk-tokens", "64", "--chunk-overlap", "8"]
    ok = subprocess.run(
        [sys.executable, "-m", "matryoshka", "rerank", *args, "--json", QUERY, *DOCS],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ok.returncode == 0, ok.stderr
    payload = json.loads(ok.stdout)
    long = next(r for r in payload["results"] if r["index"] == 1)
    assert long["window"]["count"] > 10
    assert 0 <= long["window"]["start"] < long["window"]["end"] <= len(LONG)
    assert payload["usage"]["rows"] > len(DOCS)
    bad = subprocess.run(
        [sys.executable, "-m", "matryoshka", "rerank", *args[:2], "--chunk-tokens", "1", QUERY, LONG],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode != 0
    assert "INVALID_ARGUMENT" in bad.stderr
    assert "documents[0].text:" in bad.stderr
