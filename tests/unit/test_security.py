"""Server security pieces: token parsing and comparison, settings, and TLS over an in-process server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from pydantic import ValidationError
from transformers import PreTrainedTokenizerFast

from matryoshka.engine.reranker import Reranker
from matryoshka.model.matryoshka_model import MatryoshkaModel
from matryoshka.server.app import Running, reflection_on
from matryoshka.server.security import accepted, load_tokens, token_of
from matryoshka.server.settings import Settings
from matryoshka_client import RerankClient, RerankError, tls_credentials
from tests.certs import Authority, Pem
from tests.conftest import tiny_llama
from tests.unit.inprocess import serving


def test_tokens_from_the_environment_and_a_file(tmp_path: Path) -> None:
    file = tmp_path / "tokens"
    file.write_text("file-one\n\n  file-two  \n")
    settings = Settings(auth_tokens=" a, b ,,", auth_token_file=file)
    assert load_tokens(settings) == (b"a", b"b", b"file-one", b"file-two")
    assert load_tokens(Settings()) == ()
    assert "a, b" not in repr(settings)  # a SecretStr: never printed
    (tmp_path / "empty").write_text("\n  \n")
    with pytest.raises(ValueError, match="hold no token"):
        load_tokens(Settings(auth_token_file=tmp_path / "empty"))  # never silently open


@pytest.mark.parametrize(
    ("metadata", "token"),
    [
        ((), None),
        ((("authorization", "Bearer t0k"),), b"t0k"),
        ((("authorization", "bearer t0k "),), b"t0k"),
        ((("authorization", "Basic t0k"),), b""),
        ((("x-other", "Bearer t0k"),), None),
    ],
)
def test_token_of_reads_the_bearer_token(metadata: tuple[tuple[str, str], ...], token: bytes | None) -> None:
    assert token_of(metadata) == token


def test_accepted_compares_every_token() -> None:
    assert accepted(b"b", (b"a", b"b"))
    assert not accepted(b"", (b"a", b"b"))
    assert not accepted(b"c", ())


def test_settings_refuse_half_tls_and_reflection_follows_auth(tmp_path: Path) -> None:
    with pytest.raises(ValidationError):
        Settings(tls_cert=tmp_path / "c.pem")
    with pytest.raises(ValidationError):
        Settings(tls_client_ca=tmp_path / "ca.pem")
    assert reflection_on(Settings())
    assert not reflection_on(Settings(auth_tokens="t"))
    assert reflection_on(Settings(auth_tokens="t", reflection=True))


@pytest.fixture(scope="module")
def tls_server(
    tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: PreTrainedTokenizerFast
) -> Iterator[tuple[Running, Pem]]:
    """TLS only (no client certificates) with a token file, over the tiny model."""
    directory = tmp_path_factory.mktemp("tls")
    ca = Authority(directory, "ca")
    cert = ca.issue("server", server=True)
    (directory / "tokens").write_text("tls-token\n")
    settings = Settings(port=0, tls_cert=cert.cert, tls_key=cert.key, auth_token_file=directory / "tokens")
    model = MatryoshkaModel.from_hf("tiny-llama", tiny_llama(), tiny_tokenizer)
    with serving(settings, Reranker(model)) as running:
        yield running, ca.pem


def test_tls_client_is_served_and_plaintext_refused(tls_server: tuple[Running, Pem]) -> None:
    running, ca = tls_server
    target = f"127.0.0.1:{running.port}"
    with RerankClient(target, credentials=tls_credentials(ca.cert), token="tls-token", timeout=30) as c:
        assert len(c.rerank("the cat", ["the cat sat", "blue sky"]).results) == 2
    with RerankClient(target, credentials=tls_credentials(ca.cert.read_bytes()), timeout=30) as c:
        with pytest.raises(RerankError) as err:
            c.rerank("the cat", ["the cat sat"])
        assert err.value.code == grpc.StatusCode.UNAUTHENTICATED
    with RerankClient(target, token="tls-token", timeout=5) as c, pytest.raises(RerankError) as err:
        c.rerank("the cat", ["the cat sat"])
    assert err.value.code == grpc.StatusCode.UNAVAILABLE


def test_tls_credentials_need_certificate_and_key_together(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="together"):
        tls_credentials(certificate_chain=b"x")
