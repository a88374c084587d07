"""Published score read-outs: a checkpoint's own relevance head, applied at every layer that has one.

A `ReadoutScorer` reads the anchor's pooled state (model/backbone.py `pooled`) through a per-layer
module that maps (batch, hidden) to (batch,) logits. The modules are fp32 copies of the checkpoint's
weights (never views of the backbone's, so a bf16 backbone keeps its own dtype):
- `LinearReadout`: w . h (+ b), optionally scaled and soft-capped: the "Yes" row of an LM head, the
  "yes" minus "no" rows (Qwen3-Reranker), or a trained per-layer head (layerwise re-rankers);
- `ClassifierReadout`: a sequence-classification head (BERT's pooler + classifier).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from matryoshka.model.backbone import Backbone
from matryoshka.model.heads import Scorer
from matryoshka.model.state import LayerState


class LinearReadout(nn.Module):
    """logit = softcap(scale * (w . h) + bias); softcap(x) = cap * tanh(x / cap) when a cap is set."""

    weight: Tensor

    def __init__(
        self, weight: Tensor, *, bias: float = 0.0, scale: float = 1.0, softcap: float | None = None
    ):
        super().__init__()
        self.register_buffer("weight", weight.detach().float().clone().reshape(-1))
        self.bias = bias
        self.scale = scale
        self.softcap = softcap

    def forward(self, pooled: Tensor) -> Tensor:
        """(batch, hidden) -> (batch,) fp32 logits."""
        logits = (pooled.float() @ self.weight) * self.scale + self.bias
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


class ClassifierReadout(nn.Module):
    """A sequence-classification head on the anchor: `pooler` then `classifier` (1 or 2 labels).

    With two labels the logit is label 1 minus label 0, so sigmoid(logit) is softmax's label-1 probability.
    """

    def __init__(self, pooler: nn.Module | None, classifier: nn.Module) -> None:
        super().__init__()
        self.pooler = copy.deepcopy(pooler).float() if pooler is not None else None
        self.classifier = copy.deepcopy(classifier).float()

    def forward(self, pooled: Tensor) -> Tensor:
        """(batch, hidden) -> (batch,) fp32 logits."""
        x = pooled.float()
        if self.pooler is not None:
            x = self.pooler(x)
        out = self.classifier(x)
        if out.shape[-1] == 2:
            return out[:, 1] - out[:, 0]  # type: ignore[no-any-return]
        if out.shape[-1] != 1:
            raise ValueError(f"a relevance classifier has 1 or 2 labels, this one has {out.shape[-1]}")
        return out[:, 0]  # type: ignore[no-any-return]


class ReadoutScorer(Scorer):
    """Scores with a checkpoint's own head; `readouts` maps each head layer to its read-out module."""

    name = "heads"

    def __init__(self, backbone: Backbone, readouts: Mapping[int, nn.Module]) -> None:
        super().__init__(backbone, list(readouts))
        self.readouts = nn.ModuleDict({str(layer): module for layer, module in readouts.items()})

    def logits(self, state: LayerState) -> Tensor:
        self._check(state)
        return self.readouts[str(state.layer)](self.backbone.pooled(state))  # type: ignore[no-any-return]

    def flops_per_row(self, query_tokens: int) -> int:
        # One multiply-add per weight of the deepest head (heads of one checkpoint share a shape).
        head = self.readouts[str(self.head_layers[-1])]
        return 2 * sum(t.numel() for t in (*head.parameters(), *head.buffers()))
