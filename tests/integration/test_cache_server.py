"""The layer-state cache end to end: real servers sharing a real `redis-server`, real SmolLM2 weights.

Server `a` and `b` serve the same model (b's entries live 2 s); `c` serves a different fingerprint
(zero-shot query likelihood, no artifact). Each test uses its own query, so entries never collide.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Iterator

import pytest
import redis

from matryoshka_client import RerankClient, RerankError, RerankResult
from tests.integration.conftest import RedisProcess, ServerProcess, free_port, launch

pytestmark = pytest.mark.slow

DOCS = [
    "The speed of light in vacuum is about 300,000 km per second.",
    "Bananas are rich in potassium.",
    "Romeo and Juliet is a tragedy written by William Shakespeare early in his career.",
    "The stock market fell sharply on Monday.",
]


@pytest.fixture(scope="module")
def servers(redis_server: RedisProcess) -> Iterator[dict[str, ServerProcess]]:
    common = {"MATRYOSHKA_CACHE_URL": redis_server.url, "MATRYOSHKA_CACHE_RETRY_SECONDS": "0.5"}
    started = {
        "a": launch(**common, MATRYOSHKA_METRICS_PORT=str(free_port())),
        "b": launch(**common, MATRYOSHKA_CACHE_TTL_SECONDS="2"),
        "c": launch(**common, MATRYOSHKA_SCORING="query_likelihood"),
    }
    try:
        for server in started.values():
            server.wait_serving()
        yield started
    finally:
        for server in started.values():
            server.stop()


def rerank(server: ServerProcess, query: str, **kwargs: object) -> RerankResult:
    with RerankClient(server.target) as client:
        return client.rerank(query, DOCS, **kwargs)  # type: ignore[arg-type]


def scores(result: RerankResult) -> dict[int, float]:
    return {d.index: d.score for d in result.results}


def wait_for_hits(server: ServerProcess, query: str, **kwargs: object) -> RerankResult:
    """Write-backs land just after the answer: retry briefly until the request is a full hit."""
    for _ in range(50):
        result = rerank(server, query, **kwargs)
        if result.usage.cache_hits == len(DOCS):
            return result
        time.sleep(0.05)
    raise AssertionError(f"no cache hit for {query!r}: {result.usage}")


def test_an_answer_from_one_server_is_a_hit_on_the_other(servers: dict[str, ServerProcess]) -> None:
    query = "who wrote romeo and juliet"
    cold = rerank(servers["a"], query, depth=20)
    assert cold.usage.cache_hits == cold.usage.cache_resumed == 0
    warm = wait_for_hits(servers["b"], query, depth=20)
    assert scores(warm) == pytest.approx(scores(cold), abs=1e-6)
    assert all(d.exit_reason == "cache_hit" and d.exit_layer == 20 for d in warm.results)
    assert warm.usage.flops == 0.0
    assert warm.usage.cached_flops == pytest.approx(cold.usage.flops)
    assert warm.usage.flops_saved == pytest.approx(cold.usage.flops_saved)


def test_a_deeper_request_resumes_with_a_fresh_runs_scores(servers: dict[str, ServerProcess]) -> None:
    query = "how fast does light travel"
    fresh = rerank(servers["a"], query, cache_mode="bypass")
    shallow = rerank(servers["a"], query, depth=20)
    time.sleep(0.3)  # the write-back
    deep = rerank(servers["b"], query)
    assert deep.usage.cache_resumed == len(DOCS)
    assert scores(deep) == pytest.approx(scores(fresh), abs=1e-4)
    assert all(d.exit_layer == 30 and d.exit_reason == "depth" for d in deep.results)
    assert deep.usage.flops < 0.5 * fresh.usage.flops
    assert deep.usage.cached_flops == pytest.approx(shallow.usage.flops)


def test_cache_modes(servers: dict[str, ServerProcess]) -> None:
    query = "what fruit has potassium"
    rerank(servers["a"], query, depth=15, cache_mode="read_only")
    time.sleep(0.3)
    assert rerank(servers["a"], query, depth=15).usage.cache_hits == 0  # read_only stored nothing
    wait_for_hits(servers["a"], query, depth=15)
    assert rerank(servers["a"], query, depth=15, cache_mode="bypass").usage.cache_hits == 0
    assert rerank(servers["a"], query, depth=15, cache_mode="read_only").usage.cache_hits == len(DOCS)


def test_a_corrupt_entry_is_ignored_then_overwritten(
    servers: dict[str, ServerProcess], redis_server: RedisProcess
) -> None:
    query = "why did the stock market fall"
    cold = rerank(servers["a"], query, depth=22)
    wait_for_hits(servers["a"], query, depth=22)
    client = redis.Redis.from_url(redis_server.url)
    corrupted = 0
    for key in client.scan_iter(match="mtr:*"):
        value = client.get(key)
        ttl = client.ttl(key)
        if isinstance(value, bytes) and ttl > 60:  # a's entries (b's may expire meanwhile)
            client.set(key, value[:-4] + b"oops", ex=ttl)
            corrupted += 1
    assert corrupted >= 2 * len(DOCS)
    again = rerank(servers["a"], query, depth=22)
    assert again.usage.cache_hits == again.usage.cache_resumed == 0
    assert scores(again) == pytest.approx(scores(cold), abs=1e-6)
    wait_for_hits(servers["a"], query, depth=22)  # the corrupt entries were overwritten


def test_entries_expire_after_their_ttl(
    servers: dict[str, ServerProcess], redis_server: RedisProcess
) -> None:
    query = "a tragedy by shakespeare"
    rerank(servers["b"], query, depth=25)
    wait_for_hits(servers["b"], query, depth=25)
    time.sleep(2.5)
    assert rerank(servers["b"], query, depth=25).usage.cache_hits == 0


def test_a_different_fingerprint_misses(servers: dict[str, ServerProcess]) -> None:
    query = "where do bananas grow"
    rerank(servers["a"], query, depth=15)
    wait_for_hits(servers["a"], query, depth=15)
    other = rerank(servers["c"], query, depth=15)
    assert other.usage.cache_hits == other.usage.cache_resumed == 0


def test_redis_killed_and_restarted_under_load_fails_no_request(
    servers: dict[str, ServerProcess], redis_server: RedisProcess
) -> None:
    server = servers["a"]
    failures: list[BaseException] = []
    done = threading.Event()
    count = [0]

    def hammer(worker: int) -> None:
        with RerankClient(server.target) as client:
            i = 0
            while not done.is_set():
                try:
                    client.rerank(f"load query {worker} {i % 3}", DOCS, depth=15, timeout=30)
                    count[0] += 1
                except RerankError as exc:
                    failures.append(exc)
                i += 1

    threads = [threading.Thread(target=hammer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    redis_server.kill()
    time.sleep(2.0)
    redis_server.start()
    time.sleep(1.5)
    done.set()
    for t in threads:
        t.join()
    assert failures == []
    assert count[0] >= 8
    time.sleep(0.6)  # past the retry interval
    query = "the cache works again"
    rerank(server, query, depth=20)
    wait_for_hits(server, query, depth=20)
    assert servers["a"].env["MATRYOSHKA_METRICS_PORT"]
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{server.env['MATRYOSHKA_METRICS_PORT']}/metrics")
    text = metrics.read().decode()
    errors = [line for line in text.splitlines() if line.startswith("matryoshka_cache_errors_total")]
    assert errors
    assert sum(float(line.split()[-1]) for line in errors) >= 1
