"""Build and run the gRPC server: load + warm the model, health, reflection, metrics, SIGTERM drain."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from matryoshka.engine.reranker import Reranker
from matryoshka.engine.scheduler import Scheduler
from matryoshka.server.metrics import Metrics
from matryoshka.server.servicer import RerankServicer
from matryoshka.server.settings import Settings
from matryoshka_client.proto import rerank_service_pb2 as pb
from matryoshka_client.proto import rerank_service_pb2_grpc as pb_grpc

log = logging.getLogger("matryoshka.server")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["RerankService"].full_name


@dataclass
class Running:
    """A started server: its port, and what stopping it needs."""

    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    servicer: RerankServicer
    scheduler: Scheduler
    metrics_port: int | None

    async def drain(self, grace: float) -> None:
        """Report NOT_SERVING, refuse new calls, let in-flight calls finish within `grace`, stop."""
        self.servicer.draining = True
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        await asyncio.to_thread(self.scheduler.close)


def load_engine(settings: Settings) -> Reranker:
    """The configured model: a checkpoint directory (named by `model` if given) or a packaged backbone."""
    if settings.model_dir is not None:
        name = settings.model if "model" in settings.model_fields_set else None
        return Reranker.from_checkpoint(
            settings.model_dir,
            name=name,
            dtype=settings.dtype,
            device=settings.device,
            threads=settings.threads,
        )
    return Reranker.load(
        settings.model,
        dtype=settings.dtype,
        scoring=settings.scoring,
        threads=settings.threads,
        artifact=settings.artifact,
        device=settings.device,
    )


async def start(settings: Settings, reranker: Reranker | None = None) -> Running:
    """Bind the port (NOT_SERVING), load and warm the model, then report SERVING."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", settings.max_request_bytes + (1 << 16)),
            ("grpc.max_send_message_length", 64 << 20),
        ]
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    metrics = Metrics()
    servicer = RerankServicer(settings, metrics)
    pb_grpc.add_RerankServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port(f"{settings.host}:{settings.port}")
    await server.start()
    log.info("listening on %s:%d (NOT_SERVING until the model is warm)", settings.host, port)

    try:
        engine = reranker if reranker is not None else await asyncio.to_thread(load_engine, settings)
        await asyncio.to_thread(engine.warmup)
    except BaseException:
        await server.stop(0)  # a model that cannot load leaves no half-started server behind
        raise
    engine.executor.max_batch_rows = settings.max_batch_rows
    engine.executor.max_batch_tokens = settings.max_batch_tokens
    scheduler = Scheduler(
        engine.executor, max_queue=settings.max_queue, retry_after=settings.retry_after_seconds
    )
    servicer.attach(engine, scheduler)
    metrics_port = (
        metrics.serve(settings.metrics_port, settings.host) if settings.metrics_port is not None else None
    )
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("serving %s on %s:%d", engine.info.name, settings.host, port)
    return Running(server, port, health_servicer, servicer, scheduler, metrics_port)


async def serve(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT, then drain."""
    running = await start(settings)
    print(f"matryoshka serving {running.servicer.info.name} on {settings.host}:{running.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("draining (up to %.0fs)", settings.drain_seconds)
    await running.drain(settings.drain_seconds)
