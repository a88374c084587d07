"""RerankService over grpc.aio: translate, submit to the engine's scheduler, answer. No torch here."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from matryoshka.engine.executor import Job, JobResult, Outcome
from matryoshka.engine.exits import ExitReason
from matryoshka.engine.reranker import Reranker, rank
from matryoshka.engine.scheduler import Scheduler
from matryoshka.model.matryoshka_model import ModelInfo
from matryoshka.server.errors import DrainingError, NotReadyError, abort, status_code
from matryoshka.server.metrics import Metrics
from matryoshka.server.settings import Settings
from matryoshka.server.translate import RerankCall, to_call, to_duration
from matryoshka_client.proto import rerank_service_pb2 as pb
from matryoshka_client.proto import rerank_service_pb2_grpc as pb_grpc

EXIT_REASONS = {reason: pb.ExitReason.Value(f"EXIT_REASON_{reason.name}") for reason in ExitReason}
FAMILIES = {"decoder": pb.MODEL_FAMILY_DECODER, "encoder": pb.MODEL_FAMILY_ENCODER}
SCORINGS = {"heads": pb.SCORING_MODE_HEADS, "query_likelihood": pb.SCORING_MODE_QUERY_LIKELIHOOD}


class RerankServicer(pb_grpc.RerankServiceServicer):
    """Implements matryoshka.v1.RerankService on one loaded model."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.draining = False
        self._engine: tuple[Reranker, Scheduler] | None = None

    def attach(self, reranker: Reranker, scheduler: Scheduler) -> None:
        """Start answering with a loaded, warm model (until then calls get UNAVAILABLE)."""
        self._engine = (reranker, scheduler)

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
        try:
            call = self._accept(request)
            result, waited = await self._run(call, context, None)
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
        try:
            call = self._accept(request.request)
            loop = asyncio.get_running_loop()
            stages: asyncio.Queue[tuple[int, list[Outcome]]] = asyncio.Queue()

            def on_stage(layer: int, outcomes: list[Outcome]) -> None:
                loop.call_soon_threadsafe(stages.put_nowait, (layer, outcomes))

            task = asyncio.ensure_future(self._run(call, context, on_stage))
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
                        results=self._results(call, outcomes, running_ok=True),
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
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model {request.model!r}")
        s = self.settings
        info = self.info
        model = pb.ModelInfo(
            name=info.name,
            family=FAMILIES[info.family],
            num_layers=info.num_layers,
            hidden_size=info.hidden_size,
            head_layers=list(info.head_layers),
            scoring=SCORINGS[info.scoring],
            limits=pb.ModelLimits(
                max_documents=s.max_documents,
                max_request_bytes=s.max_request_bytes,
                max_query_tokens=s.max_query_tokens,
                max_document_tokens=s.max_document_tokens,
            ),
            default_truncation=pb.Truncation(
                max_query_tokens=s.max_query_tokens,
                max_document_tokens=s.default_document_tokens,
                side=pb.TRUNCATION_SIDE_END,
            ),
            calibration_version=info.calibration_version,
            fingerprint=info.fingerprint,
            template_version=info.template_version,
            is_default=True,
        )
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
    ) -> tuple[JobResult, float]:
        """Run on the engine thread; the gRPC deadline becomes the job's deadline, cancellation stops it."""
        cancel = threading.Event()
        remaining = context.time_remaining()
        deadline = None
        if remaining is not None and math.isfinite(remaining):
            deadline = time.monotonic() + max(remaining - self.settings.deadline_margin_seconds, 0.0)
        job = Job(
            call.query,
            call.documents,
            call.plan,
            call.truncation,
            cancelled=cancel.is_set,
            deadline=deadline,
        )
        submitted = time.perf_counter()
        future = self.scheduler.submit(job, on_stage)
        self.metrics.queue_depth.set(self.scheduler.depth)
        try:
            result = await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            cancel.set()  # the engine stops this job at its next layer boundary
            raise
        finally:
            self.metrics.queue_depth.set(self.scheduler.depth)
        waited = max(time.perf_counter() - submitted - result.compute_seconds, 0.0)
        return result, waited

    def _results(
        self, call: RerankCall, outcomes: list[Outcome], running_ok: bool = False
    ) -> list[pb.RerankResult]:
        out = []
        for o in rank(outcomes, call.top_n):
            kwargs: dict[str, Any] = {}
            if call.return_documents:
                kwargs["document"] = call.documents[o.index]
            assert running_ok or o.exit_reason is not None
            out.append(
                pb.RerankResult(
                    index=o.index,
                    id=call.ids[o.index],
                    score=o.probability if call.score_type == "probability" else o.logit,
                    exit_layer=o.exit_layer,
                    exit_reason=EXIT_REASONS[o.exit_reason] if o.exit_reason else pb.EXIT_REASON_UNSPECIFIED,
                    **kwargs,
                )
            )
        return out

    def _answer(self, call: RerankCall, result: JobResult, waited: float, start: float) -> dict[str, Any]:
        usage = result.usage
        for o in result.outcomes:
            self.metrics.exit_layer.observe(o.exit_layer)
        self.metrics.documents.inc(len(result.outcomes))
        self.metrics.flops_saved.observe(max(min(usage.flops_saved, 1.0), 0.0))
        return {
            "results": self._results(call, result.outcomes),
            "usage": pb.Usage(
                layer_tokens=usage.layer_tokens,
                flops=usage.flops,
                full_flops=usage.full_flops,
                flops_saved=usage.flops_saved,
            ),
            "timing": pb.Timing(
                queue=to_duration(waited),
                compute=to_duration(result.compute_seconds),
                total=to_duration(time.perf_counter() - start),
            ),
            "partial": result.partial,
            "model": self.info.name,
            "request_id": call.request_id,
        }

    def _count(self, method: str, code: grpc.StatusCode, start: float) -> None:
        self.metrics.requests.labels(method=method, code=code.name).inc()
        self.metrics.latency.labels(method=method).observe(time.perf_counter() - start)
