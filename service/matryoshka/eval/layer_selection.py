"""Choosing among a model's exit layers on a selection split: nDCG@10 per layer, and the confidence exit
(engine/exits.py) replayed on per-layer calibrated probabilities over a grid of settings."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from matryoshka.data.datasets import Qrels, Run
from matryoshka.engine.exits import ConfidencePolicy
from matryoshka.engine.plan import ConfidenceExit
from matryoshka.eval.metrics import evaluate

EXIT_GRID = tuple((m, irrelevant) for m in (2, 3, 4) for irrelevant in (0.02, 0.05, 0.1, 0.2))


def simulate_exits(
    probs: Mapping[int, Tensor], min_layer: int, irrelevant: float, relevant: float
) -> tuple[Tensor, Tensor]:
    """The engine's confidence exit (`ConfidencePolicy`) replayed on per-layer calibrated probabilities:
    each pair stops at the first layer where the policy lets it, else at the last. Returns the
    probability each pair is ranked by and its exit layer."""
    policy = ConfidencePolicy(ConfidenceExit(relevant=relevant, irrelevant=irrelevant, min_layer=min_layer))
    layers = sorted(probs)
    final = probs[layers[-1]].clone()
    exit_layer = torch.full_like(final, layers[-1], dtype=torch.long)
    running = torch.ones_like(final, dtype=torch.bool)
    for layer in layers[:-1]:
        stop = list(policy.decide(layer, probs[layer], running))
        final[stop] = probs[layer][stop]
        exit_layer[stop] = layer
        running[stop] = False
    return final, exit_layer


def selection_table(
    pairs: Sequence[tuple[str, str]],
    run: Run,
    qrels: Qrels,
    *,
    raw: Mapping[int, Tensor],
    lensed: Mapping[int, Tensor],
    probabilities: Mapping[int, Tensor],
    num_layers: int,
    relevant: float = 0.99,
) -> dict[str, Any]:
    """nDCG@10 of BM25, of every layer (raw and through the lens), and of the exit grid with its saving."""

    def ndcg(scores: Tensor) -> float:
        by_query: dict[str, dict[str, float]] = {}
        for (q, d), s in zip(pairs, scores.tolist(), strict=True):
            by_query.setdefault(q, {})[d] = s
        return evaluate(by_query, qrels)["ndcg@10"]

    adaptive = []
    for min_layer, irrelevant in EXIT_GRID:
        final, exit_layer = simulate_exits(probabilities, min_layer, irrelevant, relevant)
        saved = 1 - float(exit_layer.float().mean()) / num_layers
        adaptive.append(
            {"min_layer": min_layer, "irrelevant": irrelevant, "ndcg@10": ndcg(final), "saved": saved}
        )
    return {
        "adaptive": adaptive,
        "bm25": evaluate(run, qrels)["ndcg@10"],
        "raw": {layer: ndcg(v) for layer, v in raw.items()},
        "lens": {layer: ndcg(v) for layer, v in lensed.items()},
    }
