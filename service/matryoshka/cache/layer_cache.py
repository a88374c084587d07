"""Layer-state caches bound to one model: `LayerCache` (synchronous, the engine's StateCache, for
the in-process Reranker) and `AsyncLayerCache` (the server's: awaited lookups, write-back in a
bounded background task). Both plan their traffic with cache.lookup and hold bytes in a store."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Protocol

import torch

from matryoshka.cache.keys import KeySpace
from matryoshka.cache.lookup import Lookup, entries
from matryoshka.engine.job import JobResult
from matryoshka.engine.plan import Plan
from matryoshka.engine.state_cache import CachedRows
from matryoshka.model.matryoshka_model import MatryoshkaModel
from matryoshka.model.prompt import EncodedPair

log = logging.getLogger("matryoshka.cache")

STATE_DTYPES: dict[str, torch.dtype | None] = {
    "model": None,  # as the model computes them
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


class SyncStore(Protocol):
    """Bytes by key, synchronously (MemoryStore)."""

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]: ...
    def set_many(self, items: Sequence[tuple[str, bytes]]) -> None: ...


class AsyncStore(Protocol):
    """Bytes by key, awaited (MemoryStore, RedisStore); `large` marks hidden-state fetches."""

    async def aget_many(self, keys: Sequence[str], large: bool = False) -> list[bytes | None]: ...
    async def aset_many(self, items: Sequence[tuple[str, bytes]]) -> None: ...


def key_space(model: MatryoshkaModel, state_dtype: str = "model") -> KeySpace:
    """The key space of a loaded model with hidden states stored as `state_dtype`."""
    if state_dtype not in STATE_DTYPES:
        raise ValueError(f"state dtype must be one of {sorted(STATE_DTYPES)}, got {state_dtype!r}")
    dtype = str(model.backbone.dtype).removeprefix("torch.")
    return KeySpace.of(model.info, dtype, dtype if state_dtype == "model" else state_dtype)


class LayerCache:
    """The engine's StateCache over a synchronous store."""

    def __init__(
        self, store: SyncStore, space: KeySpace, *, state_dtype: str = "model", max_entry_bytes: int = 8 << 20
    ) -> None:
        self.store = store
        self.space = space
        self.state_dtype = STATE_DTYPES[state_dtype]
        self.max_entry_bytes = max_entry_bytes

    def lookup(self, pairs: Sequence[EncodedPair], plan: Plan) -> CachedRows:
        """The deepest usable cached layer per pair, up to the plan's depth."""
        planned = Lookup(self.space, pairs, plan)
        state_keys = planned.choose(self.store.get_many(planned.score_keys()))
        return planned.finish(self.store.get_many(state_keys) if state_keys else [])

    def write_back(self, pairs: Sequence[EncodedPair], plan: Plan, result: JobResult) -> None:
        """Store what the run handed back."""
        self.store.set_many(entries(self.space, pairs, plan, result, self.state_dtype, self.max_entry_bytes))


class AsyncLayerCache:
    """The server's cache: lookups are awaited before a job is queued, write-backs run afterwards in
    background tasks (at most `max_pending_writes`; past that a write-back is dropped)."""

    def __init__(
        self,
        store: AsyncStore,
        space: KeySpace,
        *,
        state_dtype: str = "model",
        max_entry_bytes: int = 8 << 20,
        max_pending_writes: int = 16,
    ) -> None:
        self.store = store
        self.space = space
        self.state_dtype = STATE_DTYPES[state_dtype]
        self.max_entry_bytes = max_entry_bytes
        self.max_pending_writes = max_pending_writes
        self._writes: set[asyncio.Task[None]] = set()

    async def lookup(self, pairs: Sequence[EncodedPair], plan: Plan) -> CachedRows:
        """The deepest usable cached layer per pair (states decoded off the event loop)."""
        planned = Lookup(self.space, pairs, plan)
        state_keys = planned.choose(await self.store.aget_many(planned.score_keys()))
        if not state_keys:
            return planned.finish([])
        blobs = await self.store.aget_many(state_keys, large=True)
        return await asyncio.to_thread(planned.finish, blobs)

    def write_back(self, pairs: Sequence[EncodedPair], plan: Plan, result: JobResult) -> bool:
        """Schedule the write-back of a finished run; False when too many are pending (dropped)."""
        if not result.states:
            return True
        if len(self._writes) >= self.max_pending_writes:
            return False
        task = asyncio.create_task(self._write(pairs, plan, result))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)
        return True

    async def drain(self) -> None:
        """Wait for the pending write-backs."""
        while self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)

    async def _write(self, pairs: Sequence[EncodedPair], plan: Plan, result: JobResult) -> None:
        try:
            items = await asyncio.to_thread(
                entries, self.space, pairs, plan, result, self.state_dtype, self.max_entry_bytes
            )
            await self.store.aset_many(items)
        except Exception:  # a write-back must never surface; the store already counts its errors
            log.exception("cache write-back failed")
