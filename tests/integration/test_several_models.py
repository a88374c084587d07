"""Several models by name in one `matryoshka serve`: each request routed by RerankRequest.model, each
model answering as it does served alone; bad `models` settings refused at start-up (exit 2)."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from matryoshka.engine.reranker import Reranker
from matryoshka.server.settings import Settings
from matryoshka_client import RerankClient, RerankError
from tests.integration.conftest import ServerProcess, free_port, launch
from tests.unit import checkpoints
from tests.unit.inprocess import serving

pytestmark = pytest.mark.slow

QUERY = "what is the capital of france"
DOCS = ["the cat sat on the mat", "paris is the capital city of france", "the sun is a hot star"]


@dataclass
class Served:
    server: ServerProcess
    dirs: dict[str, Path]


@pytest.fixture(scope="module")
def several(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One server: a tiny cross-encoder (the default), a tiny lightweight Gemma 2 and packaged MiniLM
    (cosine: its untrained heads would be drawn at random in each process)."""
    root = tmp_path_factory.mktemp("models")
    dirs = {
        "enc": checkpoints.bert_cross_encoder(root / "tiny-bert"),
        "light": checkpoints.gemma2_lightweight(root / "tiny-lightweight", start_layer=2),
    }
    entries = [f"{name}={path}" for name, path in dirs.items()] + ["mini=minilm-l6,scoring=cosine"]
    server = launch(MATRYOSHKA_MODELS=json.dumps(entries), MATRYOSHKA_METRICS_PORT=str(free_port()))
    try:
        server.wait_serving(timeout=300)
        with RerankClient(server.target) as client:
            assert len(client.model_info()) == 3  # SERVING only once every model is loaded and warm
        yield Served(server, dirs)
    finally:
        server.stop()


def alone(reranker: Reranker) -> list[tuple[int, float]]:
    """(index, score) of QUERY/DOCS from a server that serves only `reranker`."""
    with (
        serving(Settings(port=0, dtype="float32", cache_url="off"), reranker) as running,
        RerankClient(f"127.0.0.1:{running.port}") as client,
    ):
        return [(d.index, d.score) for d in client.rerank(QUERY, DOCS).results]


def scores(client: RerankClient, model: str) -> list[tuple[int, float]]:
    result = client.rerank(QUERY, DOCS, model=model)
    assert result.model == (model or "enc")
    return [(d.index, d.score) for d in result.results]


def test_model_info_lists_every_model_default_first(several: Served) -> None:
    with RerankClient(several.server.target) as client:
        infos = client.model_info()
        (light,) = client.model_info("light")
    assert [(m.name, m.family, m.is_default) for m in infos] == [
        ("enc", "encoder", True),
        ("light", "decoder", False),
        ("mini", "encoder", False),
    ]
    assert light == infos[1]
    assert (light.head_layers, light.merge_ratios) == ((2, 3, 4), (2.0, 4.0, 8.0))
    assert len({m.fingerprint for m in infos}) == 3


def test_requests_are_routed_by_name_and_score_as_each_model_served_alone(several: Served) -> None:
    with RerankClient(several.server.target) as client:
        served = {name: scores(client, name) for name in ("enc", "light", "mini")}
        default = scores(client, "")
        for _ in range(50):  # the layer-state cache answers it now (once the write-back has landed)
            again = client.rerank(QUERY, DOCS, model="light")
            if again.usage.cache_hits == len(DOCS):
                break
            time.sleep(0.05)
    expected = {
        name: alone(Reranker.from_checkpoint(path, dtype="float32")) for name, path in several.dirs.items()
    }
    expected["mini"] = alone(Reranker.load("minilm-l6", dtype="float32", scoring="cosine"))
    for name, ranked in served.items():
        assert [i for i, _ in ranked] == [i for i, _ in expected[name]], name
        assert [s for _, s in ranked] == pytest.approx([s for _, s in expected[name]], abs=1e-5), name
    assert default == served["enc"]
    # three different models score the same pairs differently, and the shared cache never mixes them up
    assert len({tuple(s for _, s in sorted(r)) for r in served.values()}) == 3
    assert again.usage.cache_hits == len(DOCS)
    assert [(d.index, d.score) for d in again.results] == served["light"]


def test_an_unknown_model_is_not_found_naming_the_served_ones(several: Served) -> None:
    with RerankClient(several.server.target) as client:
        for call in (lambda: client.rerank(QUERY, DOCS, model="nope"), lambda: client.model_info("nope")):
            with pytest.raises(RerankError) as caught:
                call()
            assert caught.value.code == grpc.StatusCode.NOT_FOUND
            assert "unknown model 'nope'; served: ['enc', 'light', 'mini']" in caught.value.message


def test_metrics_are_labelled_by_model(several: Served) -> None:
    with RerankClient(several.server.target) as client:
        client.rerank(QUERY, DOCS, model="light")
        with pytest.raises(RerankError):
            client.rerank(QUERY, DOCS, model="made-up")
    port = int(several.server.env["MATRYOSHKA_METRICS_PORT"])
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert 'matryoshka_requests_total{code="OK",method="Rerank",model="light"}' in body
    assert 'matryoshka_requests_total{code="NOT_FOUND",method="Rerank",model=""}' in body
    assert "made-up" not in body  # a caller's name never becomes a label value
    for name in ("enc", "light", "mini"):
        assert f'matryoshka_queue_size{{model="{name}"}} 0.0' in body


@pytest.mark.parametrize(
    ("models", "said"),
    [
        (["a=minilm-l6", "a=./elsewhere"], "model name 'a' is served twice (a=minilm-l6 and a=./elsewhere)"),
        (["a=minilm-l6,depth=3"], "unknown option 'depth=3'"),
        (["a=minilm-l7"], "unknown backbone 'minilm-l7'; packaged: "),
        (["a=/nonexistent/ckpt"], "cannot serve model 'a' (a=/nonexistent/ckpt): model directory"),
    ],
)
def test_bad_models_settings_are_refused_at_start_up(models: list[str], said: str) -> None:
    server = launch(MATRYOSHKA_MODELS=json.dumps(models))
    try:
        code = server.process.wait(120)
        output = server.output()
    finally:
        server.stop()
    assert code == 2, output
    assert said in output
    assert "Traceback" not in output
