"""Test doubles for the engine: slow a model down deterministically, and poison one token so any
layer step over a row holding it raises (failure isolation). No weights, no timing luck."""

from __future__ import annotations

import time

from matryoshka.model.matryoshka_model import MatryoshkaModel
from matryoshka.model.state import LayerState
from tests.conftest import VOCAB

POISON = "river"  # a row with this word makes its layer step raise


def slow_and_poisoned(model: MatryoshkaModel, seconds_per_row: float = 0.0) -> MatryoshkaModel:
    """Each layer step sleeps `seconds_per_row` per row; a bucket holding POISON raises."""
    backbone = model.backbone
    real = backbone.forward_layer
    poison = VOCAB[POISON]

    def forward_layer(layer: int, state: LayerState) -> LayerState:
        if bool((state.token_ids == poison).any()):
            raise RuntimeError("poisoned row")
        time.sleep(seconds_per_row * state.batch_size)
        return real(layer, state)

    backbone.forward_layer = forward_layer  # type: ignore[method-assign]
    return model
