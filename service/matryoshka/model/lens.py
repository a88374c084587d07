"""Depth lens: per-layer translators that let an intermediate layer read the LM head as the last does.

Query likelihood read at layer l through the final norm and LM head (the "logit lens") is poor below
the last few layers: intermediate residual streams are not yet in the output basis. A translator is an
affine map `h + W_l h + b_l` (zero-initialised, so an untrained one is the logit lens) trained to make
the LM head's distribution at layer l match the last layer's (a "tuned lens", Belrose et al. 2023).
It is our decoder's form of the paper's per-layer heads: each exit layer gets its own small trained
module on top of the shared backbone, and the full-depth model is its teacher.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn


class DepthLens(nn.Module):
    """Affine translators into the last layer's residual space, one per lensed layer."""

    def __init__(self, hidden_size: int, layers: Sequence[int]) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.layers = tuple(sorted(set(layers)))
        self.translators = nn.ModuleDict(
            {str(layer): nn.Linear(hidden_size, hidden_size) for layer in self.layers}
        )
        with torch.no_grad():
            for module in self.translators.values():
                linear: Any = module
                linear.weight.zero_()
                linear.bias.zero_()

    def __contains__(self, layer: object) -> bool:
        return layer in self.layers

    def forward(self, layer: int, hidden: Tensor) -> Tensor:
        """`hidden` (..., hidden_size) at `layer` carried to the last layer's space (as is if unlensed)."""
        if layer not in self.layers:
            return hidden
        linear: Any = self.translators[str(layer)]
        return hidden + linear(hidden.to(linear.weight.dtype)).to(hidden.dtype)  # type: ignore[no-any-return]

    def flops_per_token(self, layer: int) -> int:
        """Multiply-adds x2 the translator of `layer` costs per token (0 if unlensed)."""
        return 2 * self.hidden_size * self.hidden_size if layer in self.layers else 0
