"""The Python client's long-document options against the real default server: a chunked request's
window slices the very text that was scored, min_score drops what falls below it, and bad values are
INVALID_ARGUMENT naming their fields."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from matryoshka_client import (
    AsyncRerankClient,
    Chunking,
    FieldViolation,
    RerankClient,
    RerankError,
    Window,
)
from tests.integration.conftest import ServerProcess

pytestmark = pytest.mark.slow

QUERY = "who wrote romeo and juliet"
FILLER = (
    "Bananas are rich in potassium and grow in tropical climates. " * 4
    + "The stock market fell sharply on Monday after the report. " * 4
)
ANSWER = "Romeo and Juliet is a tragedy written by William Shakespeare early in his career."
DOCS = [
    "Bananas are rich in potassium.",
    f"{FILLER}{ANSWER} {FILLER}",  # long: the answer sits in a middle window
    "The stock market fell sharply on Monday.",
]
CHUNKING = Chunking(window_tokens=32, overlap_tokens=8)


def test_a_chunked_result_names_the_window_its_score_came_from(default_server: ServerProcess) -> None:
    with RerankClient(default_server.target, timeout=300) as client:
        result = client.rerank(QUERY, DOCS, chunking=CHUNKING, cache_mode="bypass")
        assert result.results[0].index == 1
        windows = {d.index: d.window for d in result.results}
        assert all(w is not None for w in windows.values())
        long = windows[1]
        assert long is not None
        assert 0 < long.index < long.count - 1  # a middle window of the long document decided it
        assert "written by William Shakespeare" in long.text(DOCS[1])
        for i in (0, 2):  # short documents are one window: the whole text
            assert windows[i] == Window(index=0, count=1, start=0, end=len(DOCS[i]))
        assert result.usage.rows == long.count + 2
        # Scored alone, the window's text gets the very score the long document got through it.
        [alone] = client.rerank(QUERY, [long.text(DOCS[1])], cache_mode="bypass").results
    assert alone.window is None
    assert alone.score == pytest.approx(result.results[0].score, abs=1e-4)


def test_min_score_drops_the_results_below_it(default_server: ServerProcess) -> None:
    async def main() -> None:
        async with AsyncRerankClient(default_server.target, timeout=300) as client:
            every = await client.rerank(QUERY, DOCS, chunking=CHUNKING)
            scores = [d.score for d in every.results]
            assert len(scores) == 3
            floor = (scores[0] + scores[1]) / 2
            kept = await client.rerank(QUERY, DOCS, chunking=CHUNKING, min_score=floor)
            assert [d.index for d in kept.results] == [every.results[0].index]
            assert kept.results[0].score >= floor
            floor = (scores[1] + scores[2]) / 2
            both = await client.rerank(QUERY, DOCS, chunking=CHUNKING, min_score=floor, top_n=1)
            assert [d.index for d in both.results] == [every.results[0].index]  # top_n cuts too
            none = await client.rerank(QUERY, DOCS, min_score=1.0)  # without chunking as well
            assert none.results == []

    asyncio.run(main())


def test_first_aggregate_runs_only_the_first_window(default_server: ServerProcess) -> None:
    with RerankClient(default_server.target, timeout=300) as client:
        result = client.rerank(QUERY, DOCS, chunking=Chunking(32, 8, aggregate="first"), cache_mode="bypass")
    long = next(d.window for d in result.results if d.index == 1)
    assert long is not None
    assert (long.index, long.start) == (0, 0)
    assert long.count > 1
    assert result.usage.rows == 3


def test_bad_chunking_and_min_score_name_their_fields(default_server: ServerProcess) -> None:
    with RerankClient(default_server.target, timeout=60) as client, pytest.raises(RerankError) as caught:
        client.rerank(QUERY, DOCS, chunking=Chunking(window_tokens=16, overlap_tokens=16), min_score=1.5)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    fields = {v.field for v in caught.value.field_violations}
    assert fields == {"chunking.overlap_tokens", "min_score"}
    assert all(isinstance(v, FieldViolation) and v.description for v in caught.value.field_violations)
