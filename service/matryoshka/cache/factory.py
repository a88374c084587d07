"""Pick the server's store from a URL: unset = in-process memory, redis:// or rediss:// = Redis."""

from __future__ import annotations

from matryoshka.cache.layer_cache import AsyncLayerCache, AsyncStore, key_space
from matryoshka.cache.memory import MemoryStore
from matryoshka.cache.redis import ErrorHook, RedisStore
from matryoshka.model.matryoshka_model import MatryoshkaModel


def open_cache(
    url: str | None,
    model: MatryoshkaModel,
    *,
    memory_bytes: int = 512 << 20,
    ttl_seconds: int = 86400,
    timeout: float = 0.05,
    retry_seconds: float = 2.0,
    state_dtype: str = "model",
    max_entry_bytes: int = 8 << 20,
    on_error: ErrorHook | None = None,
) -> AsyncLayerCache | None:
    """The server's cache for `model`, or None when `url` is "off"."""
    store: AsyncStore
    if url is not None and url.lower() in ("off", "none", ""):
        return None
    if url is None or url == "memory://":
        store = MemoryStore(memory_bytes)
    else:
        store = RedisStore(
            url, timeout=timeout, ttl_seconds=ttl_seconds, retry_seconds=retry_seconds, on_error=on_error
        )
    return AsyncLayerCache(
        store, key_space(model, state_dtype), state_dtype=state_dtype, max_entry_bytes=max_entry_bytes
    )
