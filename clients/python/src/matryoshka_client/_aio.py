"""The asyncio client."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

import grpc
from grpc import aio

from matryoshka_client._common import CallDefaults, MetadataInput, channel_options, metadata_pairs
from matryoshka_client._errors import RerankError
from matryoshka_client._security import authorize
from matryoshka_client._types import DocumentInput, ModelInfo, RerankOptions, RerankResult, RerankStage
from matryoshka_client.convert import build_request, to_model_info, to_result, to_stage
from matryoshka_client.proto import rerank_service_pb2 as pb
from matryoshka_client.proto import rerank_service_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from typing_extensions import Self, Unpack


class AsyncRerankClient:
    """asyncio client of a matryoshka-rerank server; the same API as RerankClient, awaited.

        async with AsyncRerankClient("localhost:50051", timeout=10) as client:
            result = await client.rerank("capital of france?", ["paris is ...", "the sun ..."])
            async for stage in client.stream_rerank("capital of france?", docs):
                ...

    `target` is a gRPC target or an existing grpc.aio.Channel (which the caller keeps owning).
    `credentials` (see `tls_credentials`) and `token` as for RerankClient. Failed calls raise RerankError.
    """

    def __init__(
        self,
        target: str | aio.Channel,
        *,
        timeout: float | None = None,
        metadata: MetadataInput | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        token: str | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self._owns_channel = isinstance(target, str)
        credentials, auth = authorize(credentials, token, self._owns_channel)
        if not isinstance(target, str):
            self._channel = target
        elif credentials is not None:
            self._channel = aio.secure_channel(target, credentials, options=channel_options(options))
        else:
            self._channel = aio.insecure_channel(target, options=channel_options(options))
        self._stub = pb_grpc.RerankServiceStub(self._channel)
        self._defaults = CallDefaults(timeout, metadata_pairs(metadata) + auth)

    async def rerank(
        self,
        query: str,
        documents: Sequence[DocumentInput],
        *,
        timeout: float | None = None,
        metadata: MetadataInput | None = None,
        **options: Unpack[RerankOptions],
    ) -> RerankResult:
        """Re-rank `documents` against `query`; see RerankOptions for the options."""
        request = build_request(query, documents, **options)
        try:
            response: pb.RerankResponse = await self._stub.Rerank(
                request,
                timeout=self._defaults.timeout_for(timeout),
                metadata=self._defaults.metadata_for(metadata),
            )
        except grpc.RpcError as e:
            raise RerankError.from_rpc_error(e) from e
        return to_result(response)

    def stream_rerank(
        self,
        query: str,
        documents: Sequence[DocumentInput],
        *,
        timeout: float | None = None,
        metadata: MetadataInput | None = None,
        **options: Unpack[RerankOptions],
    ) -> AsyncGenerator[RerankStage, None]:
        """The ranking after every head layer the request reaches, the final stage last (`async for`).
        The request is checked here and the call starts with the iteration. To stop early, `aclose()`
        the generator (or iterate inside `contextlib.aclosing`): that cancels the call at once."""
        request = pb.StreamRerankRequest(request=build_request(query, documents, **options))
        return self._stages(
            request, self._defaults.timeout_for(timeout), self._defaults.metadata_for(metadata)
        )

    async def _stages(
        self, request: pb.StreamRerankRequest, timeout: float | None, metadata: Any
    ) -> AsyncGenerator[RerankStage, None]:
        call = self._stub.StreamRerank(request, timeout=timeout, metadata=metadata)
        try:
            async for response in call:
                yield to_stage(response)
        except grpc.RpcError as e:
            raise RerankError.from_rpc_error(e) from e
        finally:
            call.cancel()  # a no-op once the call has finished

    async def model_info(
        self, model: str = "", *, timeout: float | None = None, metadata: MetadataInput | None = None
    ) -> list[ModelInfo]:
        """The models the server serves (the default one first), or just `model`."""
        try:
            response: pb.GetModelInfoResponse = await self._stub.GetModelInfo(
                pb.GetModelInfoRequest(model=model),
                timeout=self._defaults.timeout_for(timeout),
                metadata=self._defaults.metadata_for(metadata),
            )
        except grpc.RpcError as e:
            raise RerankError.from_rpc_error(e) from e
        return [to_model_info(m) for m in response.models]

    async def close(self, grace: float | None = None) -> None:
        """Close the channel (if this client opened it); `grace` seconds let calls in flight finish."""
        if self._owns_channel:
            await self._channel.close(grace)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
