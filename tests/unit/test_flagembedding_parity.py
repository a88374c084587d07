"""The layerwise family against FlagEmbedding's own class: the engine's score at every cutoff layer
equals LayerWiseMiniCPMForCausalLM's forward (fp32) on a tiny random checkpoint, for a padded batch.

The lightweight family (CostWiseGemmaForCausalLM) cannot run under transformers 5 without rewriting
its forward (docs/models.md "Parity"); tests/unit/lightweight_reference.py stands in for it."""

from __future__ import annotations

from pathlib import Path

import pytest

from matryoshka.model.checkpoint import load_checkpoint
from tests.conftest import PASSAGES
from tests.unit import checkpoints
from tests.unit.flagembedding_reference import layerwise_reference, load_layerwise
from tests.unit.minicpm_reference import layerwise_scores
from tests.unit.test_checkpoint_families import TOL, bge_ids, engine_logits


@pytest.mark.parametrize("start_layer", [1, 2, 4])
def test_layerwise_scores_equal_flagembeddings_own_class_at_every_cutoff(
    tmp_path: Path, start_layer: int
) -> None:
    directory = checkpoints.minicpm_layerwise(tmp_path / "lw", start_layer=start_layer, seed=start_layer)
    model = load_checkpoint(directory)
    cutoffs = list(range(start_layer, 5))
    assert list(model.scorer.head_layers) == cutoffs
    ours = engine_logits(model)
    theirs_model = load_layerwise(directory)
    for i, passage in enumerate(PASSAGES):
        ids = bge_ids(passage)
        theirs = layerwise_reference(theirs_model, ids, cutoffs)
        assert sorted(theirs) == cutoffs
        for layer, value in theirs.items():
            assert float(ours[layer][i]) == pytest.approx(value, abs=TOL), f"layer {layer} row {i}"
        # one cutoff asked alone gives the same score as among all of them
        assert layerwise_reference(theirs_model, ids, [cutoffs[0]])[cutoffs[0]] == pytest.approx(
            theirs[cutoffs[0]], abs=1e-6
        )
        # and the independent forward written from the published math agrees with their class
        assert layerwise_scores(directory, ids) == pytest.approx(theirs, abs=TOL)
