"""Width compression: importance-aware merging of passage tokens (paper eq. 6-8).

Passage tokens are grouped into consecutive windows of k; a window is pooled into one token with
weights alpha = softmax over the window of the log of the anchor's head-mean attention, i.e. each
token's attention renormalised within its window. Only the lowest-importance windows are merged,
and the last one chosen merges only as many tokens as are still needed, so any length is reached
exactly. Query and prompt tokens are never
merged. The merged state is right-padded again and positions restart at 0 (LayerState.positions).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from matryoshka.model.state import LayerState, Segment


@dataclass(frozen=True)
class WidthTarget:
    """How far to compress after one layer: the passage shrinks by `ratio` (>= 1), or the whole row to
    `length` tokens (query and prompt tokens always stay, so a row never goes below them plus one)."""

    ratio: float | None = None
    length: int | None = None

    def passage_targets(self, state: LayerState) -> Tensor:
        """(batch,) passage tokens each row keeps: never more than it has, never fewer than one."""
        passage = (state.segments == Segment.PASSAGE).sum(dim=1)
        if (self.ratio is None) == (self.length is None):
            raise ValueError("a width target sets exactly one of ratio or length")
        if self.ratio is not None:
            if not (math.isfinite(self.ratio) and self.ratio >= 1.0):
                raise ValueError(f"width ratio must be a finite number >= 1, got {self.ratio}")
            target = torch.ceil(passage.double() / self.ratio).long()
        else:
            assert self.length is not None
            target = self.length - (state.lengths - passage)
        return torch.minimum(target.clamp(min=1), passage)


@dataclass(frozen=True)
class Merge:
    """Where each token goes: `group` (batch, length) index in the merged row, -1 for padding;
    `weight` (batch, length) pooling weight (1 for kept tokens, sums to 1 within a merged window)."""

    group: Tensor
    weight: Tensor
    new_lengths: Tensor


def plan_merge(state: LayerState, attention: Tensor, passage_target: Tensor) -> Merge:
    """Choose the windows to merge so each row keeps `passage_target` passage tokens."""
    batch, length = state.mask.shape
    device = state.mask.device
    is_passage = state.segments == Segment.PASSAGE
    n_passage = is_passage.sum(dim=1)
    target = torch.minimum(passage_target.clamp(min=1), n_passage).clamp(min=0)
    need = n_passage - target  # tokens to remove per row
    window = torch.where(need > 0, torch.ceil(n_passage / target.clamp(min=1)).long(), 1).clamp(min=1)

    # Passage tokens are contiguous in every template; index them from the first one.
    positions = torch.arange(length, device=device).unsqueeze(0).expand(batch, length)
    first = torch.where(is_passage, positions, length).min(dim=1).values
    rel = (positions - first.unsqueeze(1)).clamp(min=0)
    win = torch.where(is_passage, rel // window.unsqueeze(1), 0)
    max_windows = int(win.max().item()) + 1 if is_passage.any() else 1

    attn = attention.float() * state.mask
    importance = torch.zeros(batch, max_windows, device=device).scatter_add_(1, win, attn * is_passage)
    size = torch.zeros(batch, max_windows, dtype=torch.long, device=device)
    size.scatter_add_(1, win, is_passage.long())
    # Least important windows first; a window that holds one token saves nothing and sorts last.
    order_key = torch.where(size > 1, importance, float("inf"))
    order = torch.sort(order_key, dim=1, stable=True).indices
    savings = (size - 1).clamp(min=0).gather(1, order)
    saved_after = savings.cumsum(dim=1)
    chosen_sorted = (saved_after - savings < need.unsqueeze(1)) & (savings > 0)
    # The last chosen window may save more than still needed: it merges only its first tokens.
    excess = torch.where(chosen_sorted, (saved_after - need.unsqueeze(1)).clamp(min=0), 0)
    limit_sorted = torch.where(chosen_sorted, size.gather(1, order) - excess, 0)
    limit = torch.zeros_like(limit_sorted).scatter_(1, order, limit_sorted)

    offset = rel % window.unsqueeze(1)
    merged = is_passage & (offset < limit.gather(1, win))
    starts = state.mask & (~merged | (offset == 0))
    group = torch.where(state.mask, starts.long().cumsum(dim=1) - 1, -1)

    merged_attn = torch.zeros(batch, max_windows, device=device).scatter_add_(1, win, attn * merged)
    window_attn = merged_attn.gather(1, win)
    window_size = limit.gather(1, win).clamp(min=1).float()
    pooled = torch.where(window_attn > 0, attn / window_attn.clamp(min=1e-30), 1.0 / window_size)
    weight = torch.where(merged, pooled, 1.0) * state.mask
    return Merge(group=group, weight=weight, new_lengths=starts.sum(dim=1))


def apply_merge(state: LayerState, merge: Merge) -> LayerState:
    """Pool tokens into their groups; the result is right-padded with fresh positions."""
    batch, _, hidden_size = state.hidden.shape
    new_len = int(merge.new_lengths.max().item())
    dump = new_len  # padding tokens land in one extra column that is dropped
    index = torch.where(merge.group >= 0, merge.group, dump)
    pooled = torch.zeros(batch, new_len + 1, hidden_size, dtype=torch.float32, device=state.hidden.device)
    weighted = state.hidden.float() * merge.weight.unsqueeze(-1)
    pooled.scatter_add_(1, index.unsqueeze(-1).expand(-1, -1, hidden_size), weighted)
    segments = torch.zeros(batch, new_len + 1, dtype=state.segments.dtype, device=state.segments.device)
    segments.scatter_(1, index, state.segments)
    # A pooled token has no single id: groups of more than one token get -1.
    members = torch.zeros(batch, new_len + 1, dtype=torch.long, device=state.mask.device)
    members.scatter_add_(1, index, state.mask.long())
    token_ids = torch.full_like(members, -1).scatter_(1, index, state.token_ids)
    token_ids = torch.where(members == 1, token_ids, -1)
    mask = torch.arange(new_len, device=state.mask.device).unsqueeze(0) < merge.new_lengths.unsqueeze(1)
    passage_before = (state.segments == Segment.PASSAGE).sum(dim=1)
    passage_after = (segments[:, :new_len] == Segment.PASSAGE).sum(dim=1)
    factor = passage_before.float() / passage_after.clamp(min=1).float()
    return LayerState(
        hidden=pooled[:, :new_len].to(state.hidden.dtype),
        mask=mask,
        segments=segments[:, :new_len],
        token_ids=token_ids[:, :new_len],
        layer=state.layer,
        compression=state.compression_factors * torch.where(passage_after > 0, factor, 1.0),
    )


def merge_width(state: LayerState, attention: Tensor, target: WidthTarget) -> LayerState:
    """Compress a state's passage tokens to `target` using the anchor's attention row."""
    merge = plan_merge(state, attention, target.passage_targets(state))
    if bool((merge.new_lengths == state.lengths).all()):
        return state
    return apply_merge(state, merge)


def merge_rows(state: LayerState, attention: Tensor, targets: list[WidthTarget | None]) -> LayerState:
    """Compress each row to its own target (None: keep it as is) using the anchor's attention row."""
    passage = (state.segments == Segment.PASSAGE).sum(dim=1)
    wanted = passage.clone()
    for target in {t for t in targets if t is not None}:
        rows = torch.tensor([t == target for t in targets], device=passage.device)
        wanted = torch.where(rows, target.passage_targets(state), wanted)
    merge = plan_merge(state, attention, wanted)
    if bool((merge.new_lengths == state.lengths).all()):
        return state
    return apply_merge(state, merge)
