"""Sub-structures and the one forward pass that scores all of them (paper section 3.2).

A structure is a width schedule; its depth is any head layer it reaches. The pass runs the full-width
model once (the teacher committee, and the full-width students) and branches each compressed
structure off at its first merge layer, so shallower students with larger widths share the work.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from torch import Tensor

from matryoshka.model.heads import HeadScorer, QueryLikelihoodScorer
from matryoshka.model.matryoshka_model import MatryoshkaModel
from matryoshka.model.prompt import EncodedPair
from matryoshka.model.state import LayerState
from matryoshka.model.width import WidthTarget, merge_width


@dataclass(frozen=True)
class Structure:
    """A width schedule (layer -> passage target after that layer); empty means full width."""

    width: tuple[tuple[int, WidthTarget], ...] = ()

    @property
    def first_merge(self) -> int | None:
        """The first layer after which this structure merges, None at full width."""
        return min((layer for layer, _ in self.width), default=None)

    @property
    def label(self) -> str:
        """Short name such as "full" or "r2@7+r4@15"."""
        if not self.width:
            return "full"
        return "+".join(
            f"r{t.ratio:g}@{layer}" if t.ratio else f"len{t.length}@{layer}" for layer, t in self.width
        )


FULL = Structure()


@dataclass
class PassOutput:
    """Pooled anchor states per (structure index, head layer) and the full-depth query likelihood."""

    pooled: dict[tuple[int, int], Tensor]
    query_likelihood: Tensor | None


def run_pass(
    model: MatryoshkaModel,
    pairs: Sequence[EncodedPair],
    structures: Sequence[Structure],
    head_layers: Sequence[int],
    *,
    query_likelihood: bool = False,
) -> PassOutput:
    """Run every structure over `pairs` to the deepest head layer; structure 0 must be full width."""
    if not structures or structures[0].width:
        raise ValueError("structure 0 must be full width (the teacher committee)")
    backbone = model.backbone
    depth = max(head_layers)
    heads = set(head_layers)
    branches = {i: dict(s.width) for i, s in enumerate(structures) if i}
    pooled: dict[tuple[int, int], Tensor] = {}
    live: dict[int, LayerState] = {}  # branched structures, by index
    state = model.embed(pairs)
    for layer in range(1, depth + 1):
        wanted = [i for i, w in branches.items() if i not in live and min(w) == layer]
        attention = backbone.anchor_attention(layer, state) if wanted else None
        for i, s in list(live.items()):
            target = branches[i].get(layer)
            att = backbone.anchor_attention(layer, s) if target is not None else None
            s = backbone.forward_layer(layer, s)
            live[i] = merge_width(s, att, target) if att is not None and target is not None else s
        state = backbone.forward_layer(layer, state)
        for i in wanted:
            assert attention is not None
            live[i] = merge_width(state, attention, branches[i][layer])
        if layer in heads:
            pooled[(0, layer)] = backbone.pooled(state).float()
            for i, s in live.items():
                pooled[(i, layer)] = backbone.pooled(s).float()
    ql = None
    if query_likelihood:
        if depth != backbone.num_layers:
            raise ValueError("the query-likelihood teacher needs the pass to reach the last layer")
        ql = QueryLikelihoodScorer(backbone, [depth]).logits(state)
    return PassOutput(pooled, ql)


def head_logits(model: MatryoshkaModel, pooled: Tensor, layer: int) -> Tensor:
    """Raw logits of the head at `layer` on pooled anchor states."""
    if not isinstance(model.scorer, HeadScorer):
        raise ValueError(f"model scores by {model.scorer.name}; training needs heads")
    return model.scorer.head_logits(layer, pooled)


def backbone_autocast(model: MatryoshkaModel, enabled: bool) -> AbstractContextManager[object]:
    """bf16 autocast on the backbone's device: matmuls in bf16, fp32 weights stay the master copy."""
    return torch.autocast(model.backbone.device.type, dtype=torch.bfloat16, enabled=enabled)
