"""`matryoshka serve --model-dir`: a published-layout checkpoint directory served end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from matryoshka_client import RerankClient, WidthStep
from tests.integration.conftest import launch
from tests.unit import checkpoints

pytestmark = pytest.mark.slow

QUERY = "what is the capital of france"
DOCS = ["the cat sat on the mat", "paris is the capital city of france", "the sun is a hot star"]


def test_a_checkpoint_directory_is_served_with_its_exits_and_ratios(tmp_path: Path) -> None:
    directory = checkpoints.gemma2_lightweight(tmp_path / "tiny-lightweight", start_layer=2)
    server = launch(MATRYOSHKA_MODEL_DIR=str(directory))
    try:
        server.wait_serving(timeout=120)
        with RerankClient(server.target) as client:
            (info,) = client.model_info()
            full = client.rerank(QUERY, DOCS)
            cut = client.rerank(QUERY, DOCS, depth=3, width=[WidthStep(1, ratio=2.0)])
    finally:
        server.stop()
    assert (info.name, info.family, info.num_layers) == ("tiny-lightweight", "decoder", 4)
    assert (info.head_layers, info.merge_ratios) == ((2, 3, 4), (2.0, 4.0, 8.0))
    assert full.model == "tiny-lightweight"
    assert {d.exit_layer for d in full.results} == {4}
    assert {d.exit_layer for d in cut.results} == {3}
    assert cut.usage.flops < full.usage.flops


def test_an_unsupported_directory_fails_with_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "t5").mkdir()
    (tmp_path / "t5" / "config.json").write_text(
        json.dumps({"architectures": ["T5ForConditionalGeneration"]})
    )
    server = launch(MATRYOSHKA_MODEL_DIR=str(tmp_path / "t5"))
    assert server.process.wait(120) == 2
    output = server.output()
    assert "unsupported architecture ['T5ForConditionalGeneration']" in output
    assert "Gemma2ForCausalLM" in output
    assert "Traceback" not in output
