"""Build and run the gRPC server: TLS, interceptors, load + warm every served model, health,
reflection, metrics, SIGTERM drain."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Mapping
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from matryoshka.engine.reranker import Reranker
from matryoshka.server.access_log import AccessLogInterceptor
from matryoshka.server.loader import load_models
from matryoshka.server.metrics import Metrics
from matryoshka.server.security import TokenAuthInterceptor, auth_on, load_tokens, server_credentials
from matryoshka.server.served import serve_models
from matryoshka.server.servicer import RerankServicer
from matryoshka.server.settings import Settings
from matryoshka.server.wire import DecodeGuardInterceptor
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
    metrics_port: int | None

    async def drain(self, grace: float) -> None:
        """Report NOT_SERVING, refuse new calls, let in-flight calls finish within `grace`, stop every
        model's scheduler."""
        self.servicer.draining = True
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        for served in self.servicer.served.values():
            await asyncio.to_thread(served.scheduler.close)


async def start(settings: Settings, rerankers: Reranker | Mapping[str, Reranker] | None = None) -> Running:
    """Bind the port (NOT_SERVING), load and warm every model, then report SERVING.

    `rerankers` overrides the settings' models: one Reranker is the only (default) model; a mapping is
    served by name, the first the default. Either is warmed here."""
    server = build_server(settings)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    if reflection_on(settings):
        reflection.enable_server_reflection(
            (
                SERVICE_NAME,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )
    metrics = Metrics()
    servicer = RerankServicer(settings, metrics)
    pb_grpc.add_RerankServiceServicer_to_server(servicer, server)
    address = f"{settings.host}:{settings.port}"
    credentials = server_credentials(settings)
    if credentials is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, credentials)
    await server.start()
    if credentials is None and auth_on(settings):
        log.warning("bearer tokens over plaintext: anyone on the path can read them; set MATRYOSHKA_TLS_*")
    log.info(
        "listening on %s:%d (%s; NOT_SERVING until every model is warm)",
        settings.host,
        port,
        "plaintext" if credentials is None else ("mTLS" if settings.tls_client_ca else "TLS"),
    )

    try:
        engines = await asyncio.to_thread(_engines, settings, rerankers)
    except BaseException:
        await server.stop(0)  # a model that cannot load leaves no half-started server behind
        raise
    servicer.attach(serve_models(engines, settings, metrics))
    metrics_port = (
        metrics.serve(settings.metrics_port, settings.metrics_host)
        if settings.metrics_port is not None
        else None
    )
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    for name, engine in engines.items():
        choice = engine.dtype
        log.info("serving %s in %s (%s) on %s:%d", name, choice.name, choice.reason, settings.host, port)
    return Running(server, port, health_servicer, servicer, metrics_port)


def _engines(settings: Settings, rerankers: Reranker | Mapping[str, Reranker] | None) -> dict[str, Reranker]:
    """The served engines by name, loaded (from the settings when not given) and warm."""
    if rerankers is None:
        return load_models(settings)
    given = {rerankers.info.name: rerankers} if isinstance(rerankers, Reranker) else dict(rerankers)
    for name, engine in given.items():
        engine.model.name = name
        engine.warmup()
    return given


def build_server(settings: Settings) -> grpc.aio.Server:
    """A grpc.aio server with the request size limit (larger messages: RESOURCE_EXHAUSTED) and the
    interceptors, outermost first: access log, token authentication (when tokens are set), decode guard."""
    interceptors: list[grpc.aio.ServerInterceptor] = []
    if settings.access_log:
        interceptors.append(AccessLogInterceptor())
    tokens = load_tokens(settings)
    if tokens:
        interceptors.append(TokenAuthInterceptor(tokens))
    interceptors.append(DecodeGuardInterceptor())
    return grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", settings.max_request_bytes),
            ("grpc.max_send_message_length", 64 << 20),
        ],
    )


def reflection_on(settings: Settings) -> bool:
    """Reflection as asked for; by default on only when authentication is off."""
    if settings.reflection is not None:
        return settings.reflection
    return not auth_on(settings)


async def serve(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT, then drain."""
    running = await start(settings)
    names = ", ".join(running.servicer.served)
    print(f"matryoshka serving {names} on {settings.host}:{running.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("draining (up to %.0fs)", settings.drain_seconds)
    await running.drain(settings.drain_seconds)
