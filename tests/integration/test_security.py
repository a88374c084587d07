"""TLS, mutual TLS and bearer tokens against a real server (SmolLM2 with heads): who gets in, who not."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from matryoshka_client import AsyncRerankClient, RerankClient, RerankError, tls_credentials
from tests.certs import Authority, Pem
from tests.integration.conftest import ServerProcess, launch

pytestmark = pytest.mark.slow

QUERY = "who wrote romeo and juliet"
DOCS = ["Bananas are rich in potassium.", "Romeo and Juliet is a tragedy by William Shakespeare."]
TOKEN = f"env-{secrets.token_hex(12)}"
FILE_TOKEN = f"file-{secrets.token_hex(12)}"
WRONG_TOKEN = f"wrong-{secrets.token_hex(12)}"


@dataclass(frozen=True)
class Pki:
    """The server's CA and certificates, and a rogue CA nobody trusts."""

    ca: Pem
    server: Pem
    client: Pem
    rogue_ca: Pem
    rogue_client: Pem


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca, rogue = Authority(directory, "ca"), Authority(directory, "rogue-ca")
    return Pki(
        ca.pem,
        ca.issue("server", server=True),
        ca.issue("client", server=False),
        rogue.pem,
        rogue.issue("rogue-client", server=False),
    )


def mtls(pki: Pki) -> grpc.ChannelCredentials:
    return tls_credentials(pki.ca.cert, certificate_chain=pki.client.cert, private_key=pki.client.key)


@pytest.fixture(scope="module")
def server(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """mTLS (client certificates from `pki.ca` required) and tokens from the environment and a file."""
    token_file = tmp_path_factory.mktemp("auth") / "tokens"
    token_file.write_text(f"{FILE_TOKEN}\n\n")
    process = launch(
        mtls(pki),
        MATRYOSHKA_SCORING="heads",
        MATRYOSHKA_TLS_CERT=str(pki.server.cert),
        MATRYOSHKA_TLS_KEY=str(pki.server.key),
        MATRYOSHKA_TLS_CLIENT_CA=str(pki.ca.cert),
        MATRYOSHKA_AUTH_TOKENS=f"{TOKEN}, spare-token",
        MATRYOSHKA_AUTH_TOKEN_FILE=str(token_file),
    )
    try:
        process.wait_serving()
        yield process
    finally:
        process.stop()


@pytest.mark.parametrize("token", [TOKEN, FILE_TOKEN], ids=["env token", "file token"])
def test_mtls_client_with_a_token_is_served(server: ServerProcess, pki: Pki, token: str) -> None:
    with RerankClient(server.target, credentials=mtls(pki), token=token, timeout=60) as client:
        result = client.rerank(QUERY, DOCS, depth=2)
        (info,) = client.model_info()
    assert sorted(d.index for d in result.results) == [0, 1]
    assert info.name == "smollm2-135m"


def test_async_mtls_client_with_a_token_is_served(server: ServerProcess, pki: Pki) -> None:
    async def call() -> int:
        async with AsyncRerankClient(server.target, credentials=mtls(pki), token=TOKEN) as client:
            result = await client.rerank(QUERY, DOCS, depth=2, timeout=60)
            stages = [s async for s in client.stream_rerank(QUERY, DOCS, depth=2, timeout=60)]
        assert stages[-1].final
        return len(result.results)

    assert asyncio.run(call()) == 2


def refused_channels(pki: Pki) -> dict[str, grpc.ChannelCredentials | None]:
    return {
        "plaintext": None,
        "TLS without a client certificate": tls_credentials(pki.ca.cert),
        "client certificate from an untrusted CA": tls_credentials(
            pki.ca.cert, certificate_chain=pki.rogue_client.cert, private_key=pki.rogue_client.key
        ),
        "server not trusted by the client": tls_credentials(
            pki.rogue_ca.cert, certificate_chain=pki.client.cert, private_key=pki.client.key
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "plaintext",
        "TLS without a client certificate",
        "client certificate from an untrusted CA",
        "server not trusted by the client",
    ],
)
def test_connections_without_the_right_certificates_are_refused(
    server: ServerProcess, pki: Pki, case: str
) -> None:
    credentials = refused_channels(pki)[case]
    client = RerankClient(server.target, credentials=credentials, token=TOKEN, timeout=10)
    with client, pytest.raises(RerankError) as err:
        client.rerank(QUERY, DOCS, depth=2)
    assert err.value.code == grpc.StatusCode.UNAVAILABLE, err.value


@pytest.mark.parametrize(
    ("metadata", "code"),
    [
        ((), grpc.StatusCode.UNAUTHENTICATED),
        ((("authorization", f"Bearer {WRONG_TOKEN}"),), grpc.StatusCode.PERMISSION_DENIED),
        ((("authorization", f"Basic {TOKEN}"),), grpc.StatusCode.PERMISSION_DENIED),
        ((("authorization", "Bearer "),), grpc.StatusCode.PERMISSION_DENIED),
    ],
    ids=["no token", "wrong token", "not a bearer token", "empty token"],
)
def test_calls_without_an_accepted_token_are_refused(
    server: ServerProcess, pki: Pki, metadata: tuple[tuple[str, str], ...], code: grpc.StatusCode
) -> None:
    with RerankClient(server.target, credentials=mtls(pki), metadata=metadata, timeout=30) as client:
        for call in (lambda: client.rerank(QUERY, DOCS, depth=2), client.model_info):
            with pytest.raises(RerankError) as err:
                call()
            assert err.value.code == code
        with pytest.raises(RerankError) as err:
            list(client.stream_rerank(QUERY, DOCS, depth=2))
        assert err.value.code == code


def test_health_needs_no_token_and_reflection_is_off(server: ServerProcess, pki: Pki) -> None:
    with grpc.secure_channel(server.target, mtls(pki)) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        with pytest.raises(grpc.RpcError) as err:
            list(
                stub.ServerReflectionInfo(
                    iter([request]), timeout=10, metadata=[("authorization", f"Bearer {TOKEN}")]
                )
            )
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_tokens_never_reach_the_log(server: ServerProcess, pki: Pki) -> None:
    client = RerankClient(server.target, credentials=mtls(pki), token=WRONG_TOKEN, timeout=30)
    with client, pytest.raises(RerankError):
        client.rerank(QUERY, DOCS, depth=2)
    output = server.output()
    assert '"code": "PERMISSION_DENIED"' in output  # the access log saw the refusals
    assert all(t not in output for t in (TOKEN, FILE_TOKEN, WRONG_TOKEN, "spare-token"))
