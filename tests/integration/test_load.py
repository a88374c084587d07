"""The served engine under concurrent clients: a real gRPC server on loopback (app.start) over a tiny
model slowed to a fixed time per row and layer, so the behaviour under load is exact, not luck:
short requests overtake long ones, budgets hold, a failing request fails alone, floods are refused."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import grpc
import pytest
from transformers import PreTrainedTokenizerFast

from matryoshka.engine.reranker import Reranker
from matryoshka.model.matryoshka_model import MatryoshkaModel
from matryoshka.server import app
from matryoshka.server.settings import Settings
from matryoshka_client import Budget, RerankClient, RerankError, RerankResult
from tests.conftest import PASSAGES, tiny_llama
from tests.faults import POISON, slow_and_poisoned

STEP = 0.01  # seconds per row per layer
STEP_TOKENS = 64  # padded tokens per engine step: a few rows
ONE_STEP = 0.25  # one step (a few rows, ~0.05 s) plus scheduling noise on a shared machine
LONG = [f"{p} {i}" for i in range(8) for p in PASSAGES]  # 40 documents x 8 layers: ~3 s


@pytest.fixture(scope="module")
def target(tiny_tokenizer: PreTrainedTokenizerFast) -> Iterator[str]:
    """A served slow tiny model; yields its loopback address."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    model = slow_and_poisoned(MatryoshkaModel.from_hf("tiny", tiny_llama(layers=8), tiny_tokenizer), STEP)
    settings = Settings(port=0, max_queue=4, max_step_tokens=STEP_TOKENS, retry_after_seconds=0.2)
    running = asyncio.run_coroutine_threadsafe(app.start(settings, Reranker(model)), loop).result(120)
    try:
        yield f"127.0.0.1:{running.port}"
    finally:
        asyncio.run_coroutine_threadsafe(running.drain(5), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def call(target: str, documents: list[str], **options: object) -> RerankResult:
    """One request, bypassing the layer-state cache: these tests repeat documents (LONG), and a cache
    hit would answer at once instead of loading the engine."""
    options.setdefault("cache_mode", "bypass")
    with RerankClient(target, timeout=60) as client:
        return client.rerank("the cat", documents, **options)  # type: ignore[arg-type]


def started(pool: ThreadPoolExecutor, target: str, documents: list[str], **options: object) -> Future:  # type: ignore[type-arg]
    """Submit a call and give it time to reach the engine."""
    future = pool.submit(call, target, documents, **options)
    time.sleep(0.3)
    assert not future.done()
    return future


def test_a_short_request_finishes_while_a_long_one_runs(target: str) -> None:
    with ThreadPoolExecutor(2) as pool:
        long = started(pool, target, LONG)
        short = call(target, PASSAGES[:2], depth=2)
        assert not long.done()
        assert {d.exit_layer for d in short.results} == {2}
        assert short.timing.queue_seconds < ONE_STEP
        assert len(long.result(60).results) == len(LONG)


def test_a_budgeted_request_under_load_answers_within_its_budget(target: str) -> None:
    budget = 0.4
    with ThreadPoolExecutor(2) as pool:
        long = started(pool, target, LONG)
        sent = time.monotonic()
        quick = call(target, LONG[:20], budget=Budget(max_latency=budget))
        took = time.monotonic() - sent
        assert not long.done()
        long.result(60)
    assert took <= budget + ONE_STEP
    assert quick.partial
    assert {d.exit_reason for d in quick.results} == {"budget"}
    assert quick.timing.total_seconds <= budget + ONE_STEP


def test_a_budget_too_small_for_any_head_answers_in_input_order(target: str) -> None:
    result = call(target, PASSAGES, budget=Budget(max_latency=0.001))
    assert result.partial
    assert [d.index for d in result.results] == list(range(len(PASSAGES)))
    assert {(d.exit_layer, d.exit_reason) for d in result.results} == {(0, "budget")}


def test_a_request_that_raises_fails_alone(target: str) -> None:
    with ThreadPoolExecutor(2) as pool:
        fine = started(pool, target, LONG[:20])
        with pytest.raises(RerankError) as err:
            call(target, [*PASSAGES, f"the {POISON} water"])
        assert not fine.done()  # they ran side by side
        assert len(fine.result(60).results) == 20
    assert err.value.code == grpc.StatusCode.INTERNAL
    assert "poisoned row" in err.value.message


def test_a_flood_is_refused_with_a_retry_delay_and_the_server_keeps_serving(target: str) -> None:
    with ThreadPoolExecutor(12) as pool:
        futures = [pool.submit(call, target, LONG[:10]) for _ in range(12)]
        outcomes = [f.exception(120) or f.result() for f in futures]
    refused = [o for o in outcomes if isinstance(o, RerankError)]
    answered = [o for o in outcomes if isinstance(o, RerankResult)]
    assert refused, "4 slots for 12 concurrent requests"
    assert answered
    assert len(refused) + len(answered) == 12
    assert {e.code for e in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert all(e.retry_delay is not None and e.retry_delay >= 0.2 for e in refused)
    assert call(target, PASSAGES[:1], depth=1).results  # still serving
