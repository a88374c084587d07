"""The layerwise and lightweight families against FlagEmbedding's own classes (LayerWiseMiniCPMForCausalLM,
CostWiseGemmaForCausalLM; test-only, loaded under transformers 5 by tests/unit/flagembedding_reference.py):
the engine's score at every cutoff layer and compression setting equals their forward (fp32) on tiny
random checkpoints, and so does the independent forward written from the published math."""

from __future__ import annotations

from pathlib import Path

import pytest

from matryoshka.engine.plan import Plan, WidthTarget
from matryoshka.engine.reranker import Reranker
from matryoshka.model.checkpoint import load_checkpoint
from matryoshka.model.families.prompts import BGE_PROMPT
from tests.conftest import PASSAGES
from tests.unit import checkpoints
from tests.unit.flagembedding_reference import (
    layerwise_reference,
    lightweight_reference,
    load_layerwise,
    load_lightweight,
)
from tests.unit.lightweight_reference import lightweight_scores
from tests.unit.minicpm_reference import layerwise_scores
from tests.unit.test_checkpoint_families import QUERY, TOL, bge_ids, engine_logits, ids


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


@pytest.fixture(scope="module")
def lightweight(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Reranker, object]:
    """A tiny lightweight checkpoint (heads from layer 1), our engine on it and their class on it."""
    directory = checkpoints.gemma2_lightweight(tmp_path_factory.mktemp("lw") / "lightweight", start_layer=1)
    return directory, Reranker(load_checkpoint(directory)), load_lightweight(directory)


@pytest.mark.parametrize(
    ("compress_layers", "ratio"),
    [([], 1), ([1], 2), ([2], 4), ([1, 2], 2), ([1], 8), ([3], 2)],
    ids=["uncompressed", "2x@1", "4x@2", "2x@1,2", "8x@1", "2x@3"],
)
def test_lightweight_scores_equal_flagembeddings_own_class_at_every_cutoff_and_compression(
    lightweight: tuple[Path, Reranker, object], compress_layers: list[int], ratio: int
) -> None:
    """Their compress_layers + compress_ratio are our width steps, their cutoff layers our depths."""
    directory, reranker, theirs_model = lightweight
    cutoffs = list(reranker.info.head_layers)
    assert cutoffs == [1, 2, 3, 4]
    lengths = (1 + len(ids(f"A: {QUERY}")) + len(ids("\n")), len(ids("\n")) + len(ids(BGE_PROMPT)))
    theirs = []
    for passage in PASSAGES:
        scores = lightweight_reference(
            theirs_model, bge_ids(passage), lengths, cutoffs, compress_layers, ratio
        )
        assert scores == pytest.approx(
            lightweight_scores(directory, bge_ids(passage), lengths, compress_layers, ratio), abs=TOL
        )
        theirs.append(scores)
    checked = 0
    for depth in cutoffs:
        steps = {layer: WidthTarget(ratio=float(ratio)) for layer in compress_layers if layer < depth}
        if len(steps) != len(compress_layers):
            continue  # their forward compresses at a layer only when it runs past it
        result = reranker.rerank(QUERY, PASSAGES, Plan(depth=depth, width=steps), score_type="logit")
        for r in result.results:
            assert r.exit_layer == depth
            assert r.score == pytest.approx(theirs[r.index][depth], abs=TOL), f"depth {depth} row {r.index}"
            checked += 1
    assert checked >= len(PASSAGES)
