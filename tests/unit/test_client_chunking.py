"""The Python client's long-document options: chunking, min_score and first-stage scores on the wire,
and windows, rows and window limits back, on the real generated messages and through the sync and
asyncio transports against a fake servicer on loopback that windows documents by words."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from matryoshka_client import (
    AsyncRerankClient,
    Chunking,
    Document,
    DocumentInput,
    RerankClient,
    ScoredDocument,
    Window,
)
from matryoshka_client.convert import build_request, to_model_info, to_result, to_stage
from matryoshka_client.proto import rerank_service_pb2 as pb
from matryoshka_client.proto import rerank_service_pb2_grpc as pb_grpc

# ---------------------------------------------------------------------------------------------------------
# Request building


def test_no_new_option_means_no_new_field() -> None:
    request = build_request("q", ["a", Document("b"), {"text": "c"}])
    assert not request.HasField("chunking")
    assert not request.HasField("min_score")
    assert not any(d.HasField("first_stage_score") for d in request.documents)


@pytest.mark.parametrize(
    ("aggregate", "wire"),
    [
        (None, pb.AGGREGATE_UNSPECIFIED),
        ("max", pb.AGGREGATE_MAX),
        ("first", pb.AGGREGATE_FIRST),
        ("mean", pb.AGGREGATE_MEAN),
    ],
)
def test_chunking_reaches_its_fields(aggregate: Any, wire: int) -> None:
    request = build_request("q", ["d"], chunking=Chunking(128, overlap_tokens=32, aggregate=aggregate))
    c = request.chunking
    assert (c.window_tokens, c.overlap_tokens, c.aggregate) == (128, 32, wire)


def test_unknown_aggregate_is_a_value_error() -> None:
    with pytest.raises(ValueError, match=r"chunking.aggregate must be one of \['first', 'max', 'mean'\]"):
        build_request("q", ["d"], chunking=Chunking(64, aggregate="maxp"))  # type: ignore[arg-type]


def test_min_score_zero_is_sent_and_none_is_not() -> None:
    assert build_request("q", ["d"], min_score=0.0).HasField("min_score")
    assert build_request("q", ["d"], min_score=0.5).min_score == 0.5
    assert not build_request("q", ["d"], min_score=None).HasField("min_score")


def test_first_stage_scores_from_documents_and_mappings() -> None:
    documents: list[DocumentInput] = [
        Document("a", id="x", first_stage_score=12.5),
        {"id": "y", "text": "b", "first_stage_score": -3},  # any finite number; ints become floats
        Document("c", first_stage_score=0.0),  # 0 is a score, not "unset"
    ]
    request = build_request("q", documents)
    assert [(d.id, d.text, d.first_stage_score) for d in request.documents] == [
        ("x", "a", 12.5),
        ("y", "b", -3.0),
        ("", "c", 0.0),
    ]
    assert all(d.HasField("first_stage_score") for d in request.documents)


def test_first_stage_scores_on_some_documents_only_are_refused() -> None:
    documents: list[DocumentInput] = ["plain", Document("scored", first_stage_score=1.0), "plain too"]
    with pytest.raises(ValueError, match=r"documents\[0\].first_stage_score is missing but documents\[1\]"):
        build_request("q", documents)


@pytest.mark.parametrize("score", ["1.5", True, [1.0]])
def test_a_first_stage_score_that_is_not_a_number_is_a_type_error(score: Any) -> None:
    with pytest.raises(TypeError, match=r"documents\[1\].first_stage_score must be a number"):
        build_request("q", [Document("a", first_stage_score=1.0), {"text": "b", "first_stage_score": score}])


# ---------------------------------------------------------------------------------------------------------
# Result conversion


def test_results_carry_their_window_and_usage_its_rows() -> None:
    response = pb.RerankResponse(
        results=[
            pb.RerankResult(index=1, score=0.8, window=pb.Window(index=2, count=3, start=10, end=25)),
            pb.RerankResult(index=0, score=0.3),
        ],
        usage=pb.Usage(rows=7),
    )
    result = to_result(response)
    assert result.results[0].window == Window(index=2, count=3, start=10, end=25)
    assert result.results[1].window is None  # no window on the wire: not chunked
    assert result.usage.rows == 7
    stage = to_stage(pb.StreamRerankResponse(layer=2, results=response.results))
    assert stage.results[0].window == Window(2, 3, 10, 25)


def test_window_text_counts_code_points() -> None:
    text = "naïve café 🙂 über alles"
    assert Window(index=1, count=2, start=11, end=17).text(text) == "🙂 über"


def test_model_info_carries_the_window_limits() -> None:
    limits = pb.ModelLimits(max_documents=64, max_windows_per_document=16, max_windows_per_request=512)
    info = to_model_info(pb.ModelInfo(name="m", limits=limits))
    assert (info.limits.max_windows_per_document, info.limits.max_windows_per_request) == (16, 512)


# ---------------------------------------------------------------------------------------------------------
# Transport: a fake servicer that windows documents by words


def _windows(text: str, chunking: pb.Chunking) -> list[tuple[int, int]]:
    """[start, end) code-point spans of windows of `window_tokens` words, `overlap_tokens` shared."""
    words = [m.span() for m in re.finditer(r"\S+", text)]
    stride = chunking.window_tokens - chunking.overlap_tokens
    starts = range(0, max(len(words) - chunking.overlap_tokens, 1), stride)
    return [(words[i][0], words[min(i + chunking.window_tokens, len(words)) - 1][1]) for i in starts]


class WindowingServicer(pb_grpc.RerankServiceServicer):
    """Scores a text by the share of query words in it; a chunked document by its best window (its
    first with AGGREGATE_FIRST); drops results under min_score, then cuts to top_n."""

    def __init__(self) -> None:
        self.requests: list[pb.RerankRequest] = []

    def _results(self, request: pb.RerankRequest) -> tuple[list[pb.RerankResult], int]:
        self.requests.append(request)
        words = set(request.query.lower().split())

        def score(text: str) -> float:
            return len(words & set(text.lower().split())) / max(len(words), 1)

        results, rows = [], 0
        for i, d in enumerate(request.documents):
            if not request.HasField("chunking"):
                rows += 1
                results.append(pb.RerankResult(index=i, id=d.id, score=score(d.text), exit_layer=4))
                continue
            spans = _windows(d.text, request.chunking)
            if request.chunking.aggregate == pb.AGGREGATE_FIRST:
                spans = spans[:1]
            rows += len(spans)
            best = max(range(len(spans)), key=lambda w: score(d.text[slice(*spans[w])]))
            start, end = spans[best]
            window = pb.Window(index=best, count=len(spans), start=start, end=end)
            results.append(
                pb.RerankResult(index=i, id=d.id, score=score(d.text[start:end]), exit_layer=4, window=window)
            )
        results.sort(key=lambda r: (-r.score, r.index))
        if request.HasField("min_score"):
            results = [r for r in results if r.score >= request.min_score]
        return (results[: request.top_n] if request.top_n else results), rows

    def Rerank(self, request: pb.RerankRequest, context: grpc.ServicerContext) -> pb.RerankResponse:  # noqa: N802
        results, rows = self._results(request)
        return pb.RerankResponse(results=results, usage=pb.Usage(rows=rows), model="windowing")

    def StreamRerank(  # noqa: N802
        self, request: pb.StreamRerankRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.StreamRerankResponse]:
        results, rows = self._results(request.request)
        yield pb.StreamRerankResponse(
            layer=4, results=results, final=True, usage=pb.Usage(rows=rows), timing=pb.Timing()
        )


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, WindowingServicer]]:
    servicer = WindowingServicer()
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_RerankServiceServicer_to_server(servicer, srv)
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    yield f"127.0.0.1:{port}", servicer
    srv.stop(grace=None)


QUERY = "capital of france"
TEXTS = [
    "Lyon est une ville 🙂 du sud. Its river is wide. Paris is the capital of france and célèbre.",
    "The sun is a star. Nothing here is about a capital city at all.",
    "Bananas are yellow.",
]
CHUNKING = Chunking(window_tokens=6, overlap_tokens=2)


def _check_chunked(results: list[ScoredDocument]) -> None:
    """The best document's window is the one naming the capital, cut at the right code points."""
    best = results[0]
    assert (best.index, best.score) == (0, 1.0)
    assert best.window is not None
    assert (best.window.index, best.window.count) == (3, 5)
    assert best.window.text(TEXTS[0]) == "is the capital of france and"


def test_sync_chunked_request_round_trip(server: tuple[str, WindowingServicer]) -> None:
    target, servicer = server
    documents = [Document(t, id=f"d{i}", first_stage_score=10.0 - i) for i, t in enumerate(TEXTS)]
    with RerankClient(target) as client:
        result = client.rerank(QUERY, documents, chunking=CHUNKING, min_score=0.5)
    sent = servicer.requests[-1]
    assert (sent.chunking.window_tokens, sent.chunking.overlap_tokens) == (6, 2)
    assert (sent.HasField("min_score"), sent.min_score) == (True, 0.5)
    assert [d.first_stage_score for d in sent.documents] == [10.0, 9.0, 8.0]
    _check_chunked(result.results)
    assert [d.index for d in result.results] == [0]  # document 1 scores 1/3, document 2 nothing
    assert result.usage.rows == 5 + 3 + 1


def test_sync_unchunked_results_have_no_window(server: tuple[str, WindowingServicer]) -> None:
    target, servicer = server
    with RerankClient(target) as client:
        result = client.rerank(QUERY, TEXTS)
    assert not servicer.requests[-1].HasField("chunking")
    assert [d.window for d in result.results] == [None, None, None]
    assert result.usage.rows == 3


def test_async_chunked_request_and_stream(server: tuple[str, WindowingServicer]) -> None:
    target, servicer = server

    async def main() -> None:
        async with AsyncRerankClient(target) as client:
            result = await client.rerank(QUERY, TEXTS, chunking=CHUNKING, min_score=0.0)
            _check_chunked(result.results)
            assert len(result.results) == 3  # min_score 0 keeps everything
            stages = [
                s
                async for s in client.stream_rerank(
                    QUERY, TEXTS, chunking=Chunking(6, 2, aggregate="first"), top_n=2
                )
            ]
        first = stages[-1].result().results
        assert servicer.requests[-1].chunking.aggregate == pb.AGGREGATE_FIRST
        assert len(first) == 2
        assert all(d.window is not None and d.window.index == 0 for d in first)

    asyncio.run(main())
