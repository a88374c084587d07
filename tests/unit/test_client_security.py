"""The client's TLS and token options: where the token travels."""

from __future__ import annotations

import grpc

from matryoshka_client import tls_credentials
from matryoshka_client._security import authorize


def test_no_token_changes_nothing() -> None:
    creds = tls_credentials()
    assert authorize(creds, None, owns_channel=True) == (creds, ())


def test_a_token_rides_call_credentials_on_a_tls_channel_the_client_opens() -> None:
    creds = tls_credentials()
    composite, metadata = authorize(creds, "t0k", owns_channel=True)
    assert isinstance(composite, grpc.ChannelCredentials)
    assert composite is not creds
    assert metadata == ()


def test_otherwise_a_token_is_authorization_metadata() -> None:
    assert authorize(None, "t0k", owns_channel=True) == (None, (("authorization", "Bearer t0k"),))
    creds = tls_credentials()
    assert authorize(creds, "t0k", owns_channel=False) == (creds, (("authorization", "Bearer t0k"),))
