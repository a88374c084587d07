"""`matryoshka serve --model-dir`: a published-layout checkpoint directory served end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from matryoshka_client import RerankClient
from tests.integration.conftest import launch
from tests.unit import checkpoints

pytestmark = pytest.mark.slow

DOCS = ["the cat sat on the mat", "paris is the capital city of france", "the sun is a hot star"]


def test_a_checkpoint_directory_is_served_with_every_layer_an_exit(tmp_path: Path) -> None:
    directory = checkpoints.gemma2(tmp_path / "tiny-gemma2-reranker")
    server = launch(MATRYOSHKA_MODEL_DIR=str(directory))
    try:
        server.wait_serving(timeout=120)
        with RerankClient(server.target) as client:
            (info,) = client.model_info()
            assert (info.name, info.num_layers, info.head_layers) == ("tiny-gemma2-reranker", 4, (1, 2, 3, 4))
            assert info.family == "decoder"
            full = client.rerank("what is the capital of france", DOCS)
            shallow = client.rerank("what is the capital of france", DOCS, depth=2)
        assert full.model == "tiny-gemma2-reranker"
        assert {d.exit_layer for d in full.results} == {4}
        assert {d.exit_layer for d in shallow.results} == {2}
        assert shallow.usage.flops < full.usage.flops
    finally:
        server.stop()


def test_an_unsupported_directory_fails_with_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "t5").mkdir()
    (tmp_path / "t5" / "config.json").write_text(
        json.dumps({"architectures": ["T5ForConditionalGeneration"]})
    )
    server = launch(MATRYOSHKA_MODEL_DIR=str(tmp_path / "t5"))
    assert server.process.wait(120) == 2
    assert server.process.stdout is not None
    output = server.process.stdout.read()
    assert "unsupported architecture ['T5ForConditionalGeneration']" in output
    assert "Gemma2ForCausalLM" in output
    assert "Traceback" not in output
