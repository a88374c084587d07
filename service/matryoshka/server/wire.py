"""Requests off the wire: bytes that do not decode (invalid UTF-8 in a string field, a truncated or
malformed message) become INVALID_ARGUMENT naming the field, instead of escaping gRPC as UNKNOWN.

`DecodeGuardInterceptor` swaps the RerankService handlers' deserializers for one that never raises;
an undecodable request reaches the handler as `Undecodable` and is answered through errors.py.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import grpc
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message

from matryoshka.engine.plan import FieldViolation
from matryoshka.server.errors import abort
from matryoshka.server.translate import InvalidRequest
from matryoshka_client.proto import rerank_service_pb2 as pb

_SERVICE = pb.DESCRIPTOR.services_by_name["RerankService"]
REQUEST_TYPES: dict[str, type[Message]] = {
    f"/{_SERVICE.full_name}/{m.name}": getattr(pb, m.input_type.name) for m in _SERVICE.methods
}


class Undecodable:
    """Stands in for a request whose bytes did not decode; `error` names what is wrong."""

    def __init__(self, error: InvalidRequest) -> None:
        self.error = error


def decoder(message_type: type[Message]) -> Callable[[bytes], Message | Undecodable]:
    """A request deserializer for `message_type` that returns Undecodable instead of raising."""

    def decode(data: bytes) -> Message | Undecodable:
        try:
            return message_type.FromString(data)
        except DecodeError:
            violations = find_violations(message_type.DESCRIPTOR, data)
            return Undecodable(InvalidRequest(violations or [FieldViolation("", "not a valid message")]))

    return decode


def find_violations(descriptor: Any, data: bytes, path: str = "") -> list[FieldViolation]:
    """Walk the wire format of `data` as `descriptor` (a message Descriptor): string fields that are
    not UTF-8, and where the encoding itself breaks."""
    out: list[FieldViolation] = []
    seen: Counter[int] = Counter()
    try:
        for number, payload in _length_delimited(data):
            field = descriptor.fields_by_number.get(number)
            if field is None:
                if payload is None:
                    out.append(FieldViolation(path.rstrip("."), f"truncated: unknown field {number}"))
                continue
            name = path + field.name
            if field.is_repeated:
                name += f"[{seen[number]}]"
                seen[number] += 1
            if payload is None:
                out.append(FieldViolation(name, "truncated: runs past the end of the message"))
            elif field.type == FieldDescriptor.TYPE_STRING:
                try:
                    payload.decode("utf-8")
                except UnicodeDecodeError as exc:
                    out.append(FieldViolation(name, f"not valid UTF-8 (byte {exc.start})"))
            elif field.type == FieldDescriptor.TYPE_MESSAGE:
                out += find_violations(field.message_type, payload, name + ".")
    except ValueError as exc:
        out.append(FieldViolation(path.rstrip("."), f"malformed protobuf encoding: {exc}"))
    return out


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while pos < len(data) and shift < 64:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            return value, pos
        shift += 7
    raise ValueError("truncated varint")


def _length_delimited(data: bytes) -> Iterator[tuple[int, bytes | None]]:
    """(field number, payload) of every length-delimited field, payload None for one cut short (the
    last); other wire types are skipped."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            _, pos = _varint(data, pos)
        elif wire_type in (1, 5):
            pos += 8 if wire_type == 1 else 4
        elif wire_type == 2:
            size, pos = _varint(data, pos)
            if pos + size > len(data):
                yield number, None
                return
            yield number, data[pos : pos + size]
            pos += size
        else:
            raise ValueError(f"unsupported wire type {wire_type}")
        if pos > len(data):
            raise ValueError("truncated field")


class DecodeGuardInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Decodes RerankService requests with `decoder` and answers undecodable ones INVALID_ARGUMENT."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        message_type = REQUEST_TYPES.get(details.method)
        if handler is None or message_type is None:
            return handler
        kw = {
            "request_deserializer": decoder(message_type),
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary:
            inner = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                if isinstance(request, Undecodable):
                    await abort(context, request.error)
                return await inner(request, context)

            return grpc.unary_unary_rpc_method_handler(unary, **kw)
        stream_inner = handler.unary_stream

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, Undecodable):
                await abort(context, request.error)
            async for response in stream_inner(request, context):
                yield response

        return grpc.unary_stream_rpc_method_handler(stream, **kw)
