"""Scoring heads: a relevance score for every row at any layer that has a head.

Two scorers share one interface:
- `HeadScorer`: per-layer linear heads on the anchor's hidden state (paper eq. 5). Decoder heads start
  from the lm_head row of "Yes" and read the final-normed state; encoder heads read [CLS].
- `QueryLikelihoodScorer`: mean log p(query | passage) through the LM head (UPR): zero-shot at full
  depth, and at shallower layers through a trained depth lens (model/lens.py) when it has one.
Both carry a per-layer calibration (temperature, bias) so that probabilities mean the same at
every layer: p = sigmoid(logit / temperature + bias); identity (1, 0) until fitted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from matryoshka.model.backbone import Backbone, DecoderBackbone
from matryoshka.model.lens import DepthLens
from matryoshka.model.state import LayerState, Segment


class Calibration(nn.Module):
    """Per-layer temperature and bias mapping raw logits to calibrated probabilities."""

    temperature: Tensor
    bias: Tensor

    def __init__(self, layers: Sequence[int]) -> None:
        super().__init__()
        self.layers = tuple(layers)
        self._slot = {layer: i for i, layer in enumerate(self.layers)}
        self.register_buffer("temperature", torch.ones(len(self.layers)))
        self.register_buffer("bias", torch.zeros(len(self.layers)))

    def set(self, layer: int, temperature: float, bias: float) -> None:
        """Store the fitted parameters of one layer."""
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature[self._slot[layer]] = temperature
        self.bias[self._slot[layer]] = bias

    def calibrated_logits(self, layer: int, logits: Tensor) -> Tensor:
        """logit / temperature + bias for `layer`."""
        slot = self._slot[layer]
        return logits.float() / self.temperature[slot] + self.bias[slot]

    def probability(self, layer: int, logits: Tensor) -> Tensor:
        """Calibrated probability of relevance."""
        return torch.sigmoid(self.calibrated_logits(layer, logits))


class Scorer(nn.Module):
    """Scores rows of a state at a head layer; `head_layers` lists where it can."""

    name: str = "scorer"
    backbone: Backbone

    def __init__(self, backbone: Backbone, head_layers: Sequence[int]) -> None:
        super().__init__()
        layers = tuple(sorted(set(head_layers)))
        bad = [layer for layer in layers if not 1 <= layer <= backbone.num_layers]
        if not layers or bad:
            raise ValueError(f"head layers must be a non-empty subset of 1..{backbone.num_layers}, got {bad}")
        # A plain reference, not a submodule: the scorer owns only its heads and calibration, so
        # `scorer.to(dtype)` or `scorer.parameters()` never reach the backbone's weights.
        self.__dict__["backbone"] = backbone
        self.head_layers = layers
        self.calibration = Calibration(layers)

    def logits(self, state: LayerState) -> Tensor:
        """(batch,) fp32 raw scores at the state's layer."""
        raise NotImplementedError

    def flops_per_row(self, query_tokens: int) -> int:
        """Multiply-adds x2 one row's score costs."""
        raise NotImplementedError

    def _check(self, state: LayerState) -> None:
        if state.layer not in self.calibration._slot:
            raise ValueError(f"no head at layer {state.layer}; heads at {list(self.head_layers)}")


class HeadScorer(Scorer):
    """Linear relevance heads, one per head layer."""

    name = "heads"

    def __init__(self, backbone: Backbone, head_layers: Sequence[int], yes_token_id: int | None = None):
        super().__init__(backbone, head_layers)
        hidden = backbone.hidden_size
        self.heads = nn.ModuleDict({str(layer): nn.Linear(hidden, 1) for layer in self.head_layers})
        with torch.no_grad():
            for module in self.heads.values():
                head: Any = module
                if yes_token_id is not None and isinstance(backbone, DecoderBackbone):
                    # Paper: the score is the "Yes" logit; every layer's head starts from that row.
                    head.weight.copy_(backbone.lm_head.weight[yes_token_id].float().unsqueeze(0))
                else:
                    nn.init.normal_(head.weight, std=hidden**-0.5)
                head.bias.zero_()

    def logits(self, state: LayerState) -> Tensor:
        self._check(state)
        return self.head_logits(state.layer, self.backbone.pooled(state))

    def head_logits(self, layer: int, pooled: Tensor) -> Tensor:
        """(batch,) fp32 raw scores of the head at `layer` on already pooled anchor states."""
        head: Any = self.heads[str(layer)]
        return head(pooled.to(head.weight.dtype)).squeeze(-1).float()  # type: ignore[no-any-return]

    def flops_per_row(self, query_tokens: int) -> int:
        return 2 * self.backbone.hidden_size


@dataclass(frozen=True)
class QueryPositions:
    """Where a batch's query tokens are predicted: token t is predicted by the hidden state at t - 1."""

    predicts: Tensor  # (batch, length) bool, positions whose next token is a query token
    targets: Tensor  # (positions,) the query token each predicting position predicts, row-major
    rows: Tensor  # (positions,) the row of each predicting position


def query_positions(state: LayerState) -> QueryPositions:
    """The positions that predict query tokens in `state`, their targets and rows."""
    is_query = state.segments == Segment.QUERY
    predicts = torch.zeros_like(is_query)
    predicts[:, :-1] = is_query[:, 1:]
    rows = torch.arange(state.batch_size, device=state.hidden.device).unsqueeze(1).expand_as(predicts)
    return QueryPositions(predicts, state.token_ids[:, 1:][is_query[:, 1:]], rows[predicts])


def row_means(values: Tensor, rows: Tensor, n_rows: int) -> Tensor:
    """(n_rows,) mean of `values` per row index in `rows` (0 for a row with none)."""
    total = torch.zeros(n_rows, device=values.device).index_add_(0, rows, values)
    count = torch.zeros(n_rows, device=values.device).index_add_(0, rows, torch.ones_like(values))
    return total / count.clamp(min=1)


class QueryLikelihoodScorer(Scorer):
    """Mean log-probability of the query tokens given everything before them (decoders only)."""

    name = "query_likelihood"
    decoder: DecoderBackbone

    def __init__(
        self, backbone: Backbone, head_layers: Sequence[int] | None = None, lens_layers: Sequence[int] = ()
    ) -> None:
        if not isinstance(backbone, DecoderBackbone):
            raise ValueError("query-likelihood scoring needs a decoder backbone with an LM head")
        # Any layer can be read through the final norm and LM head ("logit lens"); the executor only
        # pays for the layers a plan scores at. Intermediate layers are weak until a depth lens is
        # trained for them (`lens_layers`, each below the last layer).
        super().__init__(backbone, head_layers or range(1, backbone.num_layers + 1))
        self.__dict__["decoder"] = backbone  # a reference, as `backbone` above
        bad = [
            layer for layer in lens_layers if layer not in self.head_layers or layer == backbone.num_layers
        ]
        if bad:
            raise ValueError(f"lens layers must be head layers below the last layer, got {bad}")
        self.lens = DepthLens(backbone.hidden_size, lens_layers)

    def logits(self, state: LayerState) -> Tensor:
        self._check(state)
        at = query_positions(state)
        hidden = self.decoder.norm(self.lens(state.layer, state.hidden[at.predicts]))
        log_probs = torch.log_softmax(self.decoder.lm_head(hidden).float(), dim=-1)
        token_lp = log_probs.gather(1, at.targets.unsqueeze(1)).squeeze(1)
        return row_means(token_lp, at.rows, state.batch_size)

    def flops_per_row(self, query_tokens: int) -> int:
        vocab = int(self.decoder.lm_head.weight.shape[0])
        lens = max((self.lens.flops_per_token(layer) for layer in self.lens.layers), default=0)
        return 2 * query_tokens * self.backbone.hidden_size * vocab + query_tokens * lens
