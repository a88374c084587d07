"""TLS, mutual TLS and bearer tokens for the clients."""

from __future__ import annotations

from os import PathLike

import grpc

from matryoshka_client._common import MetadataValue

PemInput = bytes | str | PathLike[str]
"""PEM data (bytes), or the path of a PEM file (str or Path)."""


def _pem(value: PemInput | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    with open(value, "rb") as f:
        return f.read()


def tls_credentials(
    root_certificates: PemInput | None = None,
    *,
    certificate_chain: PemInput | None = None,
    private_key: PemInput | None = None,
) -> grpc.ChannelCredentials:
    """Channel credentials for a TLS server; give a certificate and key as well for mutual TLS.

    Args:
        root_certificates: CA bundle that signed the server's certificate (None: the system roots).
        certificate_chain: this client's certificate (mTLS), with `private_key`.
        private_key: the key of `certificate_chain`.

    Returns:
        Credentials for RerankClient / AsyncRerankClient's `credentials`.

    Raises:
        ValueError: only one of certificate_chain and private_key is given.

    Example:
        RerankClient("reranker:50051", credentials=tls_credentials("ca.pem"), token="s3cret")
    """
    if (certificate_chain is None) != (private_key is None):
        raise ValueError("give certificate_chain and private_key together")
    return grpc.ssl_channel_credentials(
        root_certificates=_pem(root_certificates),
        private_key=_pem(private_key),
        certificate_chain=_pem(certificate_chain),
    )


def authorize(
    credentials: grpc.ChannelCredentials | None, token: str | None, owns_channel: bool
) -> tuple[grpc.ChannelCredentials | None, tuple[tuple[str, MetadataValue], ...]]:
    """Where `token` travels: as call credentials on a TLS channel this client opens, otherwise as
    `authorization: Bearer` metadata (grpc sends call credentials only over TLS)."""
    if token is None:
        return credentials, ()
    if credentials is not None and owns_channel:
        call = grpc.access_token_call_credentials(token)
        return grpc.composite_channel_credentials(credentials, call), ()
    return credentials, (("authorization", f"Bearer {token}"),)
