"""Pick the server's store from a URL: unset = in-process memory, redis:// or rediss:// = Redis."""

from __future__ import annotations

from matryoshka.cache.layer_cache import AsyncStore
from matryoshka.cache.memory import MemoryStore
from matryoshka.cache.redis import ErrorHook, RedisStore


def open_store(
    url: str | None,
    *,
    memory_bytes: int = 512 << 20,
    ttl_seconds: int = 86400,
    timeout: float = 0.05,
    retry_seconds: float = 2.0,
    on_error: ErrorHook | None = None,
) -> AsyncStore | None:
    """The server's store, shared by every served model (their key spaces differ), or None when
    `url` is "off"."""
    if url is not None and url.lower() in ("off", "none", ""):
        return None
    if url is None or url == "memory://":
        return MemoryStore(memory_bytes)
    return RedisStore(
        url, timeout=timeout, ttl_seconds=ttl_seconds, retry_seconds=retry_seconds, on_error=on_error
    )
