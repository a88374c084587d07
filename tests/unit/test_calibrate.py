"""Calibration: fitted temperature and bias recover the data's scale and are applied as fitted."""

from __future__ import annotations

import pytest
import torch

from matryoshka.model.heads import Calibration
from matryoshka.train.calibrate import calibrate, fit_layer


def test_fit_recovers_the_generating_temperature_and_bias() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(20000, generator=g) * 4
    labels = (torch.rand(20000, generator=g) < torch.sigmoid(logits / 2.0 - 1.0)).double()
    fit = fit_layer(logits, labels)
    assert fit.temperature == pytest.approx(2.0, rel=0.08)
    assert fit.bias == pytest.approx(-1.0, abs=0.08)
    assert fit.loss_after < fit.loss_before


def test_calibration_maps_logits_as_fitted_per_layer() -> None:
    g = torch.Generator().manual_seed(1)
    raw = {2: torch.randn(4000, generator=g) * 3, 4: torch.randn(4000, generator=g) * 0.5}
    labels = (torch.rand(4000, generator=g) < torch.sigmoid(raw[2] / 3.0 + 0.5)).double()
    cal = Calibration([2, 4])
    fits = calibrate(cal, raw, labels)
    x = torch.tensor([-2.0, 0.0, 3.0])
    for layer, fit in fits.items():
        want = torch.sigmoid(x / fit.temperature + fit.bias)
        torch.testing.assert_close(cal.probability(layer, x), want)
    assert fits[2].temperature != pytest.approx(fits[4].temperature)


def test_fit_refuses_labels_without_both_classes() -> None:
    with pytest.raises(ValueError, match="both classes"):
        fit_layer(torch.randn(5), torch.ones(5))
