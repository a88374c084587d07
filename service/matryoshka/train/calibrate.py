"""Per-layer calibration: fit temperature and bias so that p = sigmoid(logit / T + b) is a probability.

Fitted on held-out (dev) pairs by minimising binary cross-entropy against relevance labels (Platt
scaling with the slope written as a temperature). With every layer calibrated, an exit threshold such
as p <= 0.02 means the same thing at layer 4 as at layer 30.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from matryoshka.model.heads import Calibration


@dataclass(frozen=True)
class LayerFit:
    """One layer's fitted parameters and its dev log-loss before and after."""

    temperature: float
    bias: float
    loss_before: float
    loss_after: float


def fit_layer(logits: Tensor, labels: Tensor, *, steps: int = 200) -> LayerFit:
    """Fit (temperature, bias) for one layer's raw logits against 0/1 labels."""
    x = logits.detach().double().flatten()
    y = labels.detach().double().flatten()
    if x.numel() != y.numel() or x.numel() == 0:
        raise ValueError(f"need as many labels as logits (> 0), got {x.numel()} and {y.numel()}")
    if not bool(((y == 0) | (y == 1)).all()) or y.min() == y.max():
        raise ValueError("labels must be 0/1 with both classes present")
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    bias = torch.zeros((), dtype=torch.float64, requires_grad=True)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    before = float(bce(x, y))
    optimizer = torch.optim.LBFGS([log_t, bias], lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = bce(x * torch.exp(-log_t) + bias, y)
        loss.backward()
        return loss

    optimizer.step(closure)
    temperature = float(torch.exp(log_t.detach()))
    after = float(bce(x / temperature + bias.detach(), y))
    if not (math.isfinite(temperature) and math.isfinite(after)) or after > before + 1e-9:
        return LayerFit(1.0, 0.0, before, before)  # nothing better than identity was found
    return LayerFit(temperature, float(bias.detach()), before, after)


def calibrate(calibration: Calibration, logits: Mapping[int, Tensor], labels: Tensor) -> dict[int, LayerFit]:
    """Fit and store every layer in `logits` (layer -> logits of the same pairs as `labels`)."""
    fits = {}
    for layer, layer_logits in sorted(logits.items()):
        fit = fit_layer(layer_logits, labels)
        calibration.set(layer, fit.temperature, fit.bias)
        fits[layer] = fit
    return fits
