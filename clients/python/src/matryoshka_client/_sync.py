"""The blocking client."""

from __future__ import annotations

from collections.abc import Generator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

import grpc

from matryoshka_client._common import CallDefaults, MetadataInput, channel_options, metadata_pairs
from matryoshka_client._errors import RerankError
from matryoshka_client._security import authorize
from matryoshka_client._types import DocumentInput, ModelInfo, RerankOptions, RerankResult, RerankStage
from matryoshka_client.convert import build_request, to_model_info, to_result, to_stage
from matryoshka_client.proto import rerank_service_pb2 as pb
from matryoshka_client.proto import rerank_service_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from typing_extensions import Self, Unpack


class RerankClient:
    """Blocking client of a matryoshka-rerank server.

        with RerankClient("localhost:50051", timeout=10) as client:
            result = client.rerank("what is the capital of france?", ["paris is ...", "the sun ..."], top_n=3)

    `target` is a gRPC target ("host:port", "dns:///host:port", "unix:/path") or an existing
    grpc.Channel (which the caller keeps owning: close() leaves it open). `timeout` (seconds) and
    `metadata` apply to every call; a call's own come on top. `credentials` makes a TLS channel
    (see `tls_credentials`, for TLS and mutual TLS); `token` is a bearer token sent with every call.
    Failed calls raise RerankError.
    """

    def __init__(
        self,
        target: str | grpc.Channel,
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
            self._channel = grpc.secure_channel(target, credentials, options=channel_options(options))
        else:
            self._channel = grpc.insecure_channel(target, options=channel_options(options))
        self._stub = pb_grpc.RerankServiceStub(self._channel)
        self._defaults = CallDefaults(timeout, metadata_pairs(metadata) + auth)

    def rerank(
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
            response: pb.RerankResponse = self._stub.Rerank(
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
    ) -> Generator[RerankStage, None, None]:
        """The ranking after every head layer the request reaches, the final stage last. The request is
        checked here, the call runs as the generator is iterated; closing it (or dropping it after leaving
        the loop early) cancels the call."""
        request = pb.StreamRerankRequest(request=build_request(query, documents, **options))
        return self._stages(
            request, self._defaults.timeout_for(timeout), self._defaults.metadata_for(metadata)
        )

    def _stages(
        self, request: pb.StreamRerankRequest, timeout: float | None, metadata: Any
    ) -> Generator[RerankStage, None, None]:
        call = self._stub.StreamRerank(request, timeout=timeout, metadata=metadata)
        try:
            for response in call:
                yield to_stage(response)
        except grpc.RpcError as e:
            raise RerankError.from_rpc_error(e) from e
        finally:
            call.cancel()  # a no-op once the call has finished; stops the server if the caller left early

    def model_info(
        self, model: str = "", *, timeout: float | None = None, metadata: MetadataInput | None = None
    ) -> list[ModelInfo]:
        """The models the server serves (the default one first), or just `model`."""
        try:
            response: pb.GetModelInfoResponse = self._stub.GetModelInfo(
                pb.GetModelInfoRequest(model=model),
                timeout=self._defaults.timeout_for(timeout),
                metadata=self._defaults.metadata_for(metadata),
            )
        except grpc.RpcError as e:
            raise RerankError.from_rpc_error(e) from e
        return [to_model_info(m) for m in response.models]

    def close(self) -> None:
        """Close the channel (if this client opened it); later calls raise ValueError."""
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
