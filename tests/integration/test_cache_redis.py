"""RedisStore against a real redis-server (no model): round trip, TTL, and slow or absent Redis turning
into a counted, quick bypass that recovers by itself."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import redis

from matryoshka.cache.redis import RedisStore
from tests.integration.conftest import RedisProcess, free_port


def test_round_trip_with_ttl(redis_server: RedisProcess) -> None:
    async def go() -> list[bytes | None]:
        store = RedisStore(redis_server.url, ttl_seconds=30)
        await store.aset_many([("t:{x}:a", b"1"), ("t:{x}:b", b"\x00\xff")])
        try:
            return await store.aget_many(["t:{x}:a", "t:{x}:missing", "t:{x}:b"])
        finally:
            await store.close()

    assert asyncio.run(go()) == [b"1", None, b"\x00\xff"]
    assert 0 < redis.Redis.from_url(redis_server.url).ttl("t:{x}:a") <= 30


def test_a_slow_redis_times_out_into_a_bypass_then_recovers(redis_server: RedisProcess) -> None:
    errors: list[str] = []
    blocker = threading.Thread(
        target=lambda: redis.Redis.from_url(redis_server.url).execute_command("DEBUG", "SLEEP", "0.5")
    )

    async def go() -> tuple[float, list[bytes | None], bool, list[bytes | None]]:
        store = RedisStore(redis_server.url, timeout=0.05, retry_seconds=0.8, on_error=errors.append)
        await store.aset_many([("t:{y}:k", b"v")])
        blocker.start()
        await asyncio.sleep(0.1)
        start = time.monotonic()
        during = await store.aget_many(["t:{y}:k"])
        elapsed = time.monotonic() - start
        bypassing = not store.available
        blocker.join()
        await asyncio.sleep(0.9)
        after = await store.aget_many(["t:{y}:k"])
        await store.close()
        return elapsed, during, bypassing, after

    elapsed, during, bypassing, after = asyncio.run(go())
    assert during == [None]
    assert elapsed < 0.3
    assert bypassing
    assert errors == ["get"]
    assert after == [b"v"]


def test_no_redis_at_all_is_a_quick_bypass() -> None:
    errors: list[str] = []

    async def go() -> tuple[float, list[bytes | None]]:
        store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", timeout=0.05, on_error=errors.append)
        start = time.monotonic()
        got = await store.aget_many(["a", "b"])
        await store.aset_many([("a", b"1")])  # bypassed: no second error
        again = await store.aget_many(["a"])
        await store.close()
        return time.monotonic() - start, got + again

    elapsed, got = asyncio.run(go())
    assert got == [None, None, None]
    assert errors == ["get"]
    assert elapsed < 0.5


@pytest.mark.parametrize("url", ["http://localhost:6379", "localhost:6379"])
def test_only_redis_urls_are_accepted(url: str) -> None:
    with pytest.raises(ValueError, match="redis://"):
        RedisStore(url)


def test_a_full_redis_refuses_writes_but_keeps_serving_reads(redis_server: RedisProcess) -> None:
    admin = redis.Redis.from_url(redis_server.url)
    admin.set("t:{z}:old", b"kept")
    errors: list[str] = []

    async def go() -> tuple[list[bytes | None], bool]:
        store = RedisStore(redis_server.url, on_error=errors.append)
        await store.aset_many([("t:{z}:new", b"x" * 1000)])
        got = await store.aget_many(["t:{z}:old", "t:{z}:new"])
        available = store.available
        await store.close()
        return got, available

    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", "1")
    try:
        got, available = asyncio.run(go())
    finally:
        admin.config_set("maxmemory", "0")
    assert got == [b"kept", None]
    assert available
    assert errors == ["set"]
