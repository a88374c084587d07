"""The shared store: Redis through redis-py's asyncio client (a connection pool, MGET, pipelined SETs
with a TTL). Redis down, slow or full never fails a request: an error or a timeout turns the store
into a bypass for `retry_seconds` (counted, logged once), then the next call tries again."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

log = logging.getLogger("matryoshka.cache")

LARGE_GET_SECONDS = 2e-3  # extra time allowed per hidden state fetched (~0.5 MB each)
SECONDS_PER_BYTE = 4e-9  # extra time allowed per byte written (250 MB/s)
WRITE_TIMEOUT_FACTOR = 10  # write-backs run after the answer is sent: they may take longer than reads
ErrorHook = Callable[[str], None]  # called with the operation ("get" / "set") that failed


class RedisStore:
    """Async byte store on one Redis (redis:// or rediss://, AUTH in the URL)."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 0.05,
        ttl_seconds: int = 86400,
        retry_seconds: float = 2.0,
        max_connections: int = 32,
        on_error: ErrorHook | None = None,
    ) -> None:
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"cache URL must be redis://, rediss:// or unix://, got {url!r}")
        self.timeout = timeout
        self.ttl_seconds = ttl_seconds
        self.retry_seconds = retry_seconds
        self.on_error = on_error
        self._down_until = 0.0
        self._down = False
        self._refusal_logged = False
        self._client = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            max_connections=max_connections,
            retry=Retry(NoBackoff(), 0),  # no retries: a miss is cheaper than waiting
        )

    @property
    def available(self) -> bool:
        """False while bypassing after a failure."""
        return time.monotonic() >= self._down_until

    async def aget_many(self, keys: Sequence[str], large: bool = False) -> list[bytes | None]:
        """Values of `keys` in one MGET (None where missing, or everywhere while Redis is out);
        `large` values (hidden states) get more time per key."""
        if not keys or not self.available:
            return [None] * len(keys)
        budget = self.timeout + len(keys) * (LARGE_GET_SECONDS if large else 0.0)
        try:
            values = await asyncio.wait_for(self._client.mget(list(keys)), budget)
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed("get", exc)
            return [None] * len(keys)
        self._ok()
        return [v if isinstance(v, bytes) else None for v in values]

    async def aset_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        """SET each entry with the TTL in one pipelined round trip (dropped while Redis is out)."""
        if not items or not self.available:
            return
        pipe = self._client.pipeline(transaction=False)
        for key, value in items:
            pipe.set(key, value, ex=self.ttl_seconds)
        size = sum(len(v) for _, v in items)
        try:
            await asyncio.wait_for(
                pipe.execute(), WRITE_TIMEOUT_FACTOR * self.timeout + size * SECONDS_PER_BYTE
            )
        except ResponseError as exc:  # Redis refused (full: maxmemory with noeviction): keep reading
            self._refused(exc)
            return
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed("set", exc)
            return
        self._ok()

    async def close(self) -> None:
        """Close the pool's connections."""
        await self._client.aclose()

    def _failed(self, op: str, exc: BaseException) -> None:
        self._down_until = time.monotonic() + self.retry_seconds
        if self.on_error is not None:
            self.on_error(op)
        if not self._down:
            self._down = True
            log.warning(
                "cache: Redis %s failed (%s: %s); bypassing the cache, retrying every %.1fs",
                op,
                type(exc).__name__,
                exc,
                self.retry_seconds,
            )

    def _refused(self, exc: ResponseError) -> None:
        if self.on_error is not None:
            self.on_error("set")
        if not self._refusal_logged:
            self._refusal_logged = True
            log.warning("cache: Redis refused a write (%s); entries are not stored while it does", exc)

    def _ok(self) -> None:
        if self._down:
            self._down = False
            log.warning("cache: Redis is back; caching again")
