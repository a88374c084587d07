"""A served model with its own scheduler (admission and the engine thread) and its own layer-state
cache; every model's cache shares one store (one memory budget, one Redis connection pool)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from matryoshka.cache.factory import open_store
from matryoshka.cache.layer_cache import AsyncLayerCache, AsyncStore, key_space
from matryoshka.engine.reranker import Reranker
from matryoshka.engine.scheduler import Scheduler
from matryoshka.model.matryoshka_model import ModelInfo
from matryoshka.server.metrics import Metrics
from matryoshka.server.settings import Settings

log = logging.getLogger("matryoshka.server")


@dataclass(frozen=True)
class Served:
    """One served model: its engine, its scheduler and its cache (None when the cache is off)."""

    reranker: Reranker
    scheduler: Scheduler
    cache: AsyncLayerCache | None

    @property
    def info(self) -> ModelInfo:
        """The model's description; its name is the served name."""
        return self.reranker.info


def serve_models(rerankers: dict[str, Reranker], settings: Settings, metrics: Metrics) -> dict[str, Served]:
    """A scheduler per model (batch limits and admission from `settings`, metrics labelled by model)
    and a cache per model over one shared store."""
    s = settings
    store = open_store(
        s.cache_url,
        memory_bytes=s.cache_memory_bytes,
        ttl_seconds=s.cache_ttl_seconds,
        timeout=s.cache_timeout_seconds,
        retry_seconds=s.cache_retry_seconds,
        on_error=lambda op: metrics.cache_errors.labels(op=op).inc(),
    )
    log.info("layer-state cache: %s", "off" if store is None else type(store).__name__)
    return {name: _serve(name, r, store, settings, metrics) for name, r in rerankers.items()}


def _serve(
    name: str, reranker: Reranker, store: AsyncStore | None, settings: Settings, metrics: Metrics
) -> Served:
    s = settings
    executor = reranker.executor
    executor.max_batch_rows = s.max_batch_rows
    executor.max_batch_tokens = s.max_batch_tokens
    executor.max_step_tokens = s.max_step_tokens
    scheduler = Scheduler(
        executor,
        max_queue=s.max_queue,
        max_inflight_tokens=s.max_inflight_tokens,
        retry_after=s.retry_after_seconds,
        on_batch=lambda stats: metrics.observe_batch(stats, name),
    )
    metrics.queue_size.labels(model=name).set_function(lambda: scheduler.num_unfinished)
    cache = (
        None
        if store is None
        else AsyncLayerCache(
            store,
            key_space(reranker.model, s.cache_state_dtype),
            state_dtype=s.cache_state_dtype,
            max_entry_bytes=s.cache_max_entry_bytes,
        )
    )
    return Served(reranker, scheduler, cache)
