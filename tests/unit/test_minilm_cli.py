"""`matryoshka minilm-lens` end to end on a tiny BERT and a tiny collection: table, artifact, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import PreTrainedTokenizerFast
from typer.testing import CliRunner

from matryoshka.cli import app
from matryoshka.eval.layer_selection import simulate_exits
from matryoshka.model import loading
from matryoshka.model.artifact import load_artifact, read_manifest
from matryoshka.model.biencoder import CosineScorer
from matryoshka.model.loading import BackboneSpec, LoadedBackbone
from tests.conftest import tiny_bert


def test_minilm_lens_writes_a_loadable_artifact_and_resumes_from_its_cache(
    tmp_path: Path,
    eval_collection: Path,
    tiny_tokenizer: PreTrainedTokenizerFast,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = BackboneSpec("minilm-l6", "none", "none", "none", "encoder")
    backbone = LoadedBackbone(spec=spec, model=tiny_bert(), tokenizer=tiny_tokenizer, sha256="a" * 64)
    monkeypatch.setattr(loading, "load_backbone", lambda *args, **kwargs: backbone)
    monkeypatch.setenv("MATRYOSHKA_CACHE_DIR", str(tmp_path / "cache"))
    # Calibration needs both classes among BM25's candidates: q1 retrieves d1 and d7.
    (eval_collection / "qrels" / "cal.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td7\t0\n")
    args = ["minilm-lens", "--fit", str(eval_collection), "--calibrate", f"{eval_collection}:cal"]
    args += ["--select", f"{eval_collection}:test", "--lens-layers", "1,2", "--workdir", str(tmp_path / "w")]
    args += ["--out", str(tmp_path / "art")]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    table = json.loads(first.stdout)
    assert set(table["raw"]) == set(table["lens"]) == {"1", "2", "3"}
    assert table["raw"]["3"] == table["lens"]["3"]  # the last layer is read as is
    assert len(table["adaptive"]) == 12
    manifest = read_manifest(tmp_path / "art")
    assert manifest["scoring"] == "cosine"
    assert manifest["lens_layers"] == [1, 2]
    model = load_artifact(tmp_path / "art", backbone=backbone)
    assert isinstance(model.scorer, CosineScorer)
    assert model.scorer.lens_layers == (1, 2)
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "new texts" not in again.stderr  # every pooled state came from the cache


def test_simulated_exits_stop_at_the_first_confident_layer_from_the_minimum() -> None:
    probs = {
        1: torch.tensor([0.01, 0.5, 0.5, 0.995]),
        2: torch.tensor([0.5, 0.01, 0.5, 0.5]),
        3: torch.tensor([0.3, 0.3, 0.3, 0.3]),
    }
    final, exit_layer = simulate_exits(probs, min_layer=2, irrelevant=0.02, relevant=0.99)
    assert exit_layer.tolist() == [3, 2, 3, 3]  # layer 1 is below the minimum: its exits do not count
    torch.testing.assert_close(final, torch.tensor([0.3, 0.01, 0.3, 0.3]))
    _, from_first = simulate_exits(probs, min_layer=1, irrelevant=0.02, relevant=0.99)
    assert from_first.tolist() == [1, 2, 3, 1]
