"""Who may call: TLS / mutual-TLS server credentials and bearer-token authentication.

Tokens come from `MATRYOSHKA_AUTH_TOKENS` (comma-separated) and/or `MATRYOSHKA_AUTH_TOKEN_FILE` (one a
line), are compared in constant time, and are never logged. The health service stays open so load
balancers and orchestrators can probe without a token.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from matryoshka.server.errors import BadCredentialsError, MissingCredentialsError, abort
from matryoshka.server.settings import Settings

OPEN_PREFIX = "/grpc.health.v1.Health/"
_BEARER = "bearer "


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials from the PEM files in `settings` (client certificates required when a client CA is
    set); None when TLS is off."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    pair = (settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())
    client_ca = settings.tls_client_ca.read_bytes() if settings.tls_client_ca is not None else None
    return grpc.ssl_server_credentials(
        [pair], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def auth_on(settings: Settings) -> bool:
    """Whether bearer tokens are configured."""
    return settings.auth_tokens is not None or settings.auth_token_file is not None


def load_tokens(settings: Settings) -> tuple[bytes, ...]:
    """The accepted bearer tokens (empty: authentication is off); raises ValueError when tokens are
    configured but none is there (an empty file must not turn authentication off)."""
    tokens: list[str] = []
    if settings.auth_tokens is not None:
        tokens += settings.auth_tokens.get_secret_value().split(",")
    if settings.auth_token_file is not None:
        tokens += settings.auth_token_file.read_text().splitlines()
    accepted = tuple(t.strip().encode() for t in tokens if t.strip())
    if auth_on(settings) and not accepted:
        raise ValueError("MATRYOSHKA_AUTH_TOKENS / MATRYOSHKA_AUTH_TOKEN_FILE are set but hold no token")
    return accepted


def token_of(metadata: tuple[Any, ...] | None) -> bytes | None:
    """The bearer token in the call's `authorization` metadata, or None."""
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
            return text[len(_BEARER) :].strip().encode() if text.lower().startswith(_BEARER) else b""
    return None


def accepted(token: bytes, tokens: tuple[bytes, ...]) -> bool:
    """Whether `token` is one of `tokens`, comparing against every one in constant time."""
    found = False
    for t in tokens:
        found |= hmac.compare_digest(token, t)
    return found


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Refuses calls without an accepted bearer token (UNAUTHENTICATED / PERMISSION_DENIED), health
    excepted."""

    def __init__(self, tokens: tuple[bytes, ...]) -> None:
        self._tokens = tokens

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_PREFIX):
            return handler
        token = token_of(details.invocation_metadata)
        if token is None:
            return refusing(handler, MissingCredentialsError())
        if not accepted(token, self._tokens):
            return refusing(handler, BadCredentialsError())
        return handler


def refusing(handler: grpc.RpcMethodHandler, exc: Exception) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` that fails every call with `exc`'s status, without
    parsing the caller's bytes."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
        await abort(context, exc)

    async def refuse_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await abort(context, exc)
        yield  # pragma: no cover - makes this an async generator; abort raises

    kw = {"request_deserializer": None, "response_serializer": handler.response_serializer}  # never parsed
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(refuse, **kw)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(refuse_stream, **kw)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(refuse, **kw)
    return grpc.stream_stream_rpc_method_handler(refuse_stream, **kw)
