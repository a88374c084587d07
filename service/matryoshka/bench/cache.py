"""Cache benchmark: one query x `pairs` real passages through the server's cache path (tokenise,
look up, run, write back), per store: a cold request (depth 20), the same request again (warm), a
deeper re-request (full depth, resumed from layer 20), and a fresh full-depth run without the cache.

Figures: cold_s, warm_s (median of `repeats`), warm_speedup = cold_s / warm_s, resume_s, fresh_full_s,
resume_cost_ratio = resume_s / fresh_full_s, and bytes per cached pair (state + scores at layer 20).
Every store run uses a key prefix of its own, so earlier runs never answer it."""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from matryoshka.cache.layer_cache import AsyncLayerCache, AsyncStore, key_space
from matryoshka.cache.lookup import entries
from matryoshka.cache.memory import MemoryStore
from matryoshka.cache.redis import RedisStore
from matryoshka.data.datasets import document_text, load_collection
from matryoshka.engine.job import Job, JobResult
from matryoshka.engine.plan import Plan
from matryoshka.engine.reranker import Reranker
from matryoshka.engine.state_cache import CachedRows
from matryoshka.model.prompt import Truncation

FIRST_DEPTH = 20


def real_passages(data: Path, pairs: int) -> tuple[str, list[str]]:
    """The first query of a BEIR collection and up to `pairs` passages judged for it (then others)."""
    collection = load_collection(data)
    split = collection.splits()[0]
    qrels = collection.qrels(split, unknown_docs="keep")
    qid = sorted(qrels)[0]
    judged = [d for d in qrels[qid] if d in collection.corpus]
    others = [d for d in collection.corpus if d not in qrels[qid]]
    ids = (judged + others)[:pairs]
    return collection.queries[qid], [document_text(collection.corpus[d]) for d in ids]


class _Bench:
    def __init__(self, reranker: Reranker, query: str, passages: list[str]) -> None:
        self.reranker = reranker
        self.query = query
        self.passages = passages
        self.truncation = Truncation()
        self.pairs = reranker.model.encode(query, passages, self.truncation)

    def plan(self, depth: int | None) -> Plan:
        return Plan(depth=depth).resolve(self.reranker.info)

    async def request(self, cache: AsyncLayerCache | None, plan: Plan) -> tuple[float, JobResult]:
        """One request as the servicer runs it; seconds until the answer (write-back excluded)."""
        start = time.perf_counter()
        pairs = self.reranker.model.encode(self.query, self.passages, self.truncation)
        cached = await cache.lookup(pairs, plan) if cache is not None else CachedRows()
        job = Job(
            self.query, self.passages, plan, self.truncation, pairs=pairs, keep_states=cache is not None
        )
        job.resume, job.cached_scores = cached.states, cached.scores
        (result,) = self.reranker.executor.run([job])
        assert isinstance(result, JobResult)
        seconds = time.perf_counter() - start
        if cache is not None:
            cache.write_back(pairs, plan, result)
            await cache.drain()
        return seconds, result

    async def store_figures(self, store: AsyncStore, repeats: int, fresh_full_s: float) -> dict[str, Any]:
        space = replace(key_space(self.reranker.model), prefix=f"mtr-bench-{uuid.uuid4().hex[:8]}")
        cache = AsyncLayerCache(store, space)
        first = self.plan(FIRST_DEPTH)
        cold_s, cold = await self.request(cache, first)
        warm = [await self.request(cache, first) for _ in range(repeats)]
        resume_s, resumed = await self.request(cache, self.plan(None))
        written = entries(space, self.pairs, first, cold, None, 1 << 30)
        warm_s = statistics.median(s for s, _ in warm)
        return {
            "cold_s": cold_s,
            "warm_s": warm_s,
            "warm_speedup": cold_s / warm_s,
            "warm_cache_hits": warm[-1][1].usage.cache_hits,
            "resume_s": resume_s,
            "fresh_full_s": fresh_full_s,
            "resume_cost_ratio": resume_s / fresh_full_s,
            "resumed": resumed.usage.cache_resumed,
            "bytes_per_pair": sum(len(v) for _, v in written) / len(self.pairs),
        }


def run(
    reranker: Reranker, data: Path, pairs: int = 32, repeats: int = 5, redis_url: str | None = None
) -> dict[str, Any]:
    """Measure and return the figures (see the module docstring) for memory and, given a URL, Redis."""
    query, passages = real_passages(data, pairs)
    bench = _Bench(reranker, query, passages)

    async def measure() -> dict[str, Any]:
        await bench.request(None, bench.plan(None))  # warm the kernels
        fresh_full_s = min([(await bench.request(None, bench.plan(None)))[0] for _ in range(2)])
        out: dict[str, Any] = {
            "model": reranker.info.name,
            "dtype": str(reranker.model.backbone.dtype).removeprefix("torch."),
            "pairs": len(passages),
            "first_depth": FIRST_DEPTH,
            "full_depth": reranker.info.num_layers,
            "memory": await bench.store_figures(MemoryStore(), repeats, fresh_full_s),
        }
        if redis_url is not None:
            errors: list[str] = []
            store = RedisStore(redis_url, on_error=errors.append)  # the server's default timeouts
            try:
                out["redis"] = await bench.store_figures(store, repeats, fresh_full_s)
                out["redis"]["errors"] = len(errors)
            finally:
                await store.close()
        return out

    return asyncio.run(measure())
