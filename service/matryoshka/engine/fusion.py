"""Fusion with the first stage: where a document carries its retriever's score, the engine ranks by

    key_i = w(l_i) * z(c_i) + (1 - w(l_i)) * z(f_i)

c_i: the document's calibrated logit at its exit layer l_i; f_i: its first-stage score; z: z-scores
within the request (c over the documents some head scored, f over all); w(l): the layer's fusion
weight, fitted on held-out data and shipped with the calibration (1 = the head alone, 0 = the first
stage alone). A document no head reached (exit layer 0) has w = 0: it keeps its first-stage place, so a
budget-cut ranking falls back to the retriever's order rather than the input order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

EPS = 1e-6  # probabilities are clamped this far from 0 and 1 before taking their logit


def zscores(values: Tensor) -> Tensor:
    """(x - mean) / std over `values` (population std); all zeros when they do not vary."""
    if values.numel() == 0:
        return values
    centred = values - values.mean()
    std = float(values.std(unbiased=False))
    return centred / std if std > 0 else torch.zeros_like(values)


def fused_keys(
    probabilities: Sequence[float],
    exit_layers: Sequence[int],
    first_stage: Sequence[float],
    weights: Mapping[int, float],
) -> list[float]:
    """The ranking key of each document (higher = better; see the module docstring). A layer missing
    from `weights` counts as w = 1 (the head alone), exit layer 0 or a NaN probability as w = 0."""
    p = torch.tensor(list(probabilities), dtype=torch.float64)
    layers = torch.tensor(list(exit_layers), dtype=torch.long)
    return fused_standing(p, layers, first_stage, weights)(0.0).tolist()


def fused_standing(
    probabilities: Tensor, exit_layers: Tensor, first_stage: Sequence[float], weights: Mapping[int, float]
) -> Callable[[float], Tensor]:
    """`lift -> keys`: every document's fused key were its probability `lift` higher (clamped below 1),
    under the z-scoring of the probabilities as they are; lift 0 gives the ranking keys themselves."""
    p = probabilities.to(torch.float64)
    f = zscores(torch.tensor(list(first_stage), dtype=torch.float64))
    scored = ~torch.isnan(p) & (exit_layers > 0)
    logits = torch.logit(p[scored].clamp(EPS, 1 - EPS))
    mean = logits.mean() if logits.numel() else torch.tensor(0.0, dtype=torch.float64)
    std = float(logits.std(unbiased=False)) if logits.numel() else 0.0
    w = torch.tensor(
        [
            weights.get(layer, 1.0) if ok else 0.0
            for layer, ok in zip(exit_layers.tolist(), scored.tolist(), strict=True)
        ],
        dtype=torch.float64,
    )

    def keys(lift: float) -> Tensor:
        c = torch.zeros_like(p)
        if std > 0:
            c[scored] = (torch.logit((p[scored] + lift).clamp(EPS, 1 - EPS)) - mean) / std
        return w * c + (1 - w) * f

    return keys


def check_first_stage(scores: Sequence[float] | None, documents: int) -> str | None:
    """Why `scores` cannot serve as first-stage scores for `documents` documents, or None if they can."""
    if scores is None:
        return None
    if len(scores) != documents:
        return f"{len(scores)} first-stage scores for {documents} documents"
    bad = [i for i, s in enumerate(scores) if not math.isfinite(s)]
    return f"not finite at documents {bad[:10]}" if bad else None
