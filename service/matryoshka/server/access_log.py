"""Request ids and the access log: every RerankService request gets an id (the caller's, or one
assigned here), and every unary-request RPC one structured JSON line on the `matryoshka.access` logger
(health probes at DEBUG): method, request id, status code, documents, exit layers, latency and peer.
Never document or query text, never metadata (tokens travel there).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from matryoshka_client.proto import rerank_service_pb2 as pb

log = logging.getLogger("matryoshka.access")
MAX_LOGGED_ID = 128  # RerankRequest.request_id's own limit
QUIET_PREFIX = "/grpc.health.v1.Health/"  # probes arrive every few seconds: logged at DEBUG


def ensure_request_id(request: Any) -> pb.RerankRequest | None:
    """The RerankRequest inside `request` (if any), given a fresh request id when it has none."""
    inner = request.request if isinstance(request, pb.StreamRerankRequest) else request
    if not isinstance(inner, pb.RerankRequest):
        return None
    if not inner.request_id:
        inner.request_id = uuid.uuid4().hex
    return inner


def exit_layers(results: Any) -> dict[str, int]:
    """How many results exited at each layer, e.g. {"15": 3, "30": 1}."""
    counts = Counter(r.exit_layer for r in results)
    return {str(layer): n for layer, n in sorted(counts.items())}


class CallRecord:
    """What one access-log line says; filled in as the call runs."""

    def __init__(self, method: str, request: Any, context: grpc.aio.ServicerContext) -> None:
        self.start = time.perf_counter()
        self.method = method
        self.peer = context.peer()
        rerank = ensure_request_id(request)
        # an over-long id is refused (INVALID_ARGUMENT), but must not flood the log first
        self.request_id = rerank.request_id[:MAX_LOGGED_ID] if rerank is not None else ""
        self.documents = len(rerank.documents) if rerank is not None else 0
        self.exit_layers: dict[str, int] = {}

    def write(self, code: grpc.StatusCode) -> None:
        """Log the line."""
        line = {
            "method": self.method,
            "request_id": self.request_id,
            "code": code.name,
            "documents": self.documents,
            "exit_layers": self.exit_layers,
            "latency_ms": round((time.perf_counter() - self.start) * 1000, 2),
            "peer": self.peer,
        }
        level = logging.DEBUG if self.method.startswith(QUIET_PREFIX) else logging.INFO
        log.log(level, json.dumps(line))


def _code(context: grpc.aio.ServicerContext, exc: BaseException | None) -> grpc.StatusCode:
    if isinstance(exc, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    return grpc.StatusCode.UNKNOWN if exc is not None else grpc.StatusCode.OK


class AccessLogInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Assigns request ids and writes one access-log line per unary-request RPC."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or not (handler.unary_unary or handler.unary_stream):
            return handler
        method = details.method
        kw = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary:
            inner = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                record = CallRecord(method, request, context)
                try:
                    response = await inner(request, context)
                except BaseException as exc:
                    record.write(_code(context, exc))
                    raise
                record.exit_layers = exit_layers(getattr(response, "results", ()))
                record.write(_code(context, None))
                return response

            return grpc.unary_unary_rpc_method_handler(unary, **kw)
        stream_inner = handler.unary_stream
        if not inspect.isasyncgenfunction(stream_inner):  # writes with context.write (health's Watch)

            async def writer(request: Any, context: grpc.aio.ServicerContext) -> None:
                record = CallRecord(method, request, context)
                try:
                    await stream_inner(request, context)
                except BaseException as exc:
                    record.write(_code(context, exc))
                    raise
                record.write(_code(context, None))

            return grpc.unary_stream_rpc_method_handler(writer, **kw)

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            record = CallRecord(method, request, context)
            try:
                async for response in stream_inner(request, context):
                    if getattr(response, "final", False):
                        record.exit_layers = exit_layers(response.results)
                    yield response
            except BaseException as exc:
                record.write(_code(context, exc))
                raise
            record.write(_code(context, None))

        return grpc.unary_stream_rpc_method_handler(stream, **kw)
