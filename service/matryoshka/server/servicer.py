"""RerankService over grpc.aio: translate, submit to the engine's scheduler, answer. No torch here."""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from matryoshka.cache.factory import open_cache
from matryoshka.cache.layer_cache import AsyncLayerCache
from matryoshka.engine.job import BudgetExceededError, Job, JobResult, Outcome
from matryoshka.engine.reranker import Reranker
from matryoshka.engine.scheduler import Scheduler
from matryoshka.engine.state_cache import CachedRows
from matryoshka.model.matryoshka_model import ModelInfo
from matryoshka.model.prompt import EncodedPair
from matryoshka.model.window import Window
from matryoshka.server.errors import DrainingError, NotReadyError, abort, status_code
from matryoshka.server.metrics import Metrics
from matryoshka.server.settings import Settings
from matryoshka.server.translate import (
    RerankCall,
    UnknownModelError,
    check_windows,
    to_answer,
    to_call,
    to_model_info,
    to_results,
)
from matryoshka_client.proto import rerank_service_pb2 as pb
from matryoshka_client.proto import rerank_service_pb2_grpc as pb_grpc

log = logging.getLogger("matryoshka.server")


class RerankServicer(pb_grpc.RerankServiceServicer):
    """Implements matryoshka.v1.RerankService on one loaded model."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.draining = False
        self._engine: tuple[Reranker, Scheduler] | None = None
        self.cache: AsyncLayerCache | None = None

    def attach(self, reranker: Reranker, scheduler: Scheduler) -> None:
        """Start answering with a loaded, warm model (until then calls get UNAVAILABLE)."""
        self.cache = self._open_cache(reranker)
        self._engine = (reranker, scheduler)
        self.metrics.queue_size.set_function(lambda: scheduler.num_unfinished)

    @property
    def scheduler(self) -> Scheduler:
        """The engine's scheduler (only once attached)."""
        if self._engine is None:
            raise NotReadyError()
        return self._engine[1]

    @property
    def info(self) -> ModelInfo:
        """The served model (only once attached)."""
        if self._engine is None:
            raise NotReadyError()
        return self._engine[0].info

    @property
    def models(self) -> dict[str, ModelInfo]:
        """Served models by name."""
        return {self.info.name: self.info}

    # -- RPCs -----------------------------------------------------------------------------------

    async def Rerank(  # noqa: N802 - method names are the proto's
        self, request: pb.RerankRequest, context: grpc.aio.ServicerContext
    ) -> pb.RerankResponse:
        start = time.perf_counter()
        arrived = time.monotonic()
        try:
            call = self._accept(request)
            result, waited = await self._run(call, context, None, arrived)
            response = pb.RerankResponse(**self._answer(call, result, waited, start))
        except asyncio.CancelledError:
            self._count("Rerank", grpc.StatusCode.CANCELLED, start)
            raise
        except Exception as exc:
            self._count("Rerank", status_code(exc), start)
            await abort(context, exc)
        self._count("Rerank", grpc.StatusCode.OK, start)
        return response

    async def StreamRerank(  # noqa: N802 - method names are the proto's
        self, request: pb.StreamRerankRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamRerankResponse]:
        start = time.perf_counter()
        arrived = time.monotonic()
        try:
            call = self._accept(request.request)
            loop = asyncio.get_running_loop()
            stages: asyncio.Queue[tuple[int, list[Outcome]]] = asyncio.Queue()

            def on_stage(layer: int, outcomes: list[Outcome]) -> None:
                loop.call_soon_threadsafe(stages.put_nowait, (layer, outcomes))

            task = asyncio.ensure_future(self._run(call, context, on_stage, arrived))
            try:
                while not task.done() or not stages.empty():
                    getter = asyncio.ensure_future(stages.get())
                    done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                    if getter not in done:
                        getter.cancel()
                        continue
                    layer, outcomes = getter.result()
                    yield pb.StreamRerankResponse(
                        layer=layer,
                        results=to_results(call, outcomes, running_ok=True),
                        model=self.info.name,
                        request_id=call.request_id,
                    )
                result, waited = task.result()
            finally:
                task.cancel()
            final = self._answer(call, result, waited, start)
            layer = max((r.exit_layer for r in final["results"]), default=0)
            yield pb.StreamRerankResponse(layer=layer, final=True, **final)
        except asyncio.CancelledError:
            self._count("StreamRerank", grpc.StatusCode.CANCELLED, start)
            raise
        except Exception as exc:
            self._count("StreamRerank", status_code(exc), start)
            await abort(context, exc)
        self._count("StreamRerank", grpc.StatusCode.OK, start)

    async def GetModelInfo(  # noqa: N802 - method names are the proto's
        self, request: pb.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetModelInfoResponse:
        start = time.perf_counter()
        if self._engine is None:
            self._count("GetModelInfo", grpc.StatusCode.UNAVAILABLE, start)
            await abort(context, NotReadyError())
        if request.model and request.model not in self.models:
            self._count("GetModelInfo", grpc.StatusCode.NOT_FOUND, start)
            await abort(context, UnknownModelError(request.model, sorted(self.models)))
        model = to_model_info(self.info, self.settings, self._engine[0].dtype.name)
        self._count("GetModelInfo", grpc.StatusCode.OK, start)
        return pb.GetModelInfoResponse(models=[model])

    # -- helpers --------------------------------------------------------------------------------

    def _accept(self, request: pb.RerankRequest) -> RerankCall:
        if self.draining:
            raise DrainingError()
        if self._engine is None:
            raise NotReadyError()
        return to_call(request, self.models, self.info.name, self.settings)

    async def _run(
        self,
        call: RerankCall,
        context: grpc.aio.ServicerContext,
        on_stage: Callable[[int, list[Outcome]], None] | None,
        arrived: float,
    ) -> tuple[JobResult, float]:
        """Run on the engine thread; the job is due a margin before the gRPC deadline (one that leaves
        no time is DEADLINE_EXCEEDED) and before `arrived` + the budget; cancellation stops it."""
        cancel = threading.Event()
        margin = self.settings.deadline_margin_seconds
        due: list[float] = []
        budget = call.plan.budget
        if budget is not None and budget.max_seconds is not None:
            due.append(arrived + budget.max_seconds - margin)  # answered, serialised and sent in time
        remaining = context.time_remaining()
        if remaining is not None and math.isfinite(remaining):
            if remaining - margin <= 0:
                raise BudgetExceededError("the gRPC deadline leaves no time to run the request")
            due.append(time.monotonic() + remaining - margin)
        deadline = min(due, default=None)
        pairs, windows = await self._encode(call)
        if windows is not None:
            check_windows(windows, self.settings)
        cached = await self._cache_lookup(call, pairs)
        use_cache = self._use_cache(call)
        job = Job(
            call.query,
            call.documents,
            call.plan,
            call.truncation,
            cancelled=cancel.is_set,
            deadline=deadline,
            arrived=arrived,
            pairs=pairs,
            resume=cached.states,
            cached_scores=cached.scores,
            keep_states=use_cache and call.cache_mode == "read_write",
            chunking=call.chunking,
            windows=windows,
        )
        future = self.scheduler.submit(job, on_stage)
        try:
            result = await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            cancel.set()  # the engine stops this job before its next step
            raise
        if pairs is not None and use_cache:
            self._cache_write_back(call, pairs, result)
        return result, result.queue_seconds

    def _answer(self, call: RerankCall, result: JobResult, waited: float, start: float) -> dict[str, Any]:
        for o in result.outcomes:
            self.metrics.exit_layer.observe(o.exit_layer)
        self.metrics.documents.inc(len(result.outcomes))
        self.metrics.flops_saved.observe(max(min(result.usage.flops_saved, 1.0), 0.0))
        return to_answer(call, result, self.info.name, queued=waited, total=time.perf_counter() - start)

    def _count(self, method: str, code: grpc.StatusCode, start: float) -> None:
        self.metrics.requests.labels(method=method, code=code.name).inc()
        self.metrics.latency.labels(method=method).observe(time.perf_counter() - start)

    # -- the layer-state cache (I/O here, on the event loop; never on the engine thread) -----------

    def _open_cache(self, reranker: Reranker) -> AsyncLayerCache | None:
        s = self.settings
        cache = open_cache(
            s.cache_url,
            reranker.model,
            memory_bytes=s.cache_memory_bytes,
            ttl_seconds=s.cache_ttl_seconds,
            timeout=s.cache_timeout_seconds,
            retry_seconds=s.cache_retry_seconds,
            state_dtype=s.cache_state_dtype,
            max_entry_bytes=s.cache_max_entry_bytes,
            on_error=lambda op: self.metrics.cache_errors.labels(op=op).inc(),
        )
        log.info("layer-state cache: %s", "off" if cache is None else type(cache.store).__name__)
        return cache

    def _use_cache(self, call: RerankCall) -> bool:
        return self.cache is not None and call.cache_mode != "bypass"

    async def _encode(self, call: RerankCall) -> tuple[list[EncodedPair] | None, list[Window] | None]:
        """Tokenise off the loop where needed first: for the cache, and for a chunked request (its
        windows are counted against the limits before it runs); (None, None) otherwise."""
        if self._engine is None or (call.chunking is None and not self._use_cache(call)):
            return None, None
        model = self._engine[0].model
        if call.chunking is not None:
            return await asyncio.to_thread(
                model.encode_windows, call.query, call.documents, call.truncation, call.chunking
            )
        return await asyncio.to_thread(model.encode, call.query, call.documents, call.truncation), None

    async def _cache_lookup(self, call: RerankCall, pairs: list[EncodedPair] | None) -> CachedRows:
        """The cached states and scores of the pairs (nothing when the cache is not used)."""
        cache = self.cache
        if cache is None or pairs is None or not self._use_cache(call):
            return CachedRows()
        try:
            return await cache.lookup(pairs, call.plan)
        except Exception:  # the cache must never fail a request
            log.exception("cache lookup failed; running without it")
            return CachedRows()

    def _cache_write_back(self, call: RerankCall, pairs: list[EncodedPair], result: JobResult) -> None:
        """Count the cache's outcome per row and schedule the write-back (read_write only)."""
        usage = result.usage
        misses = usage.rows - usage.cache_hits - usage.cache_resumed
        for label, count in (("hit", usage.cache_hits), ("resumed", usage.cache_resumed), ("miss", misses)):
            self.metrics.cache_documents.labels(result=label).inc(count)
        cache = self.cache
        if (
            cache is not None
            and call.cache_mode == "read_write"
            and not cache.write_back(pairs, call.plan, result)
        ):
            self.metrics.cache_writes_dropped.inc()
