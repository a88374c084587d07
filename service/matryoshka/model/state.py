"""Layer states: the hidden states of a batch of (query, passage) rows after some number of layers."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import torch
from torch import Tensor


class Segment(IntEnum):
    """What a token belongs to. Only passage tokens are ever merged by width compression."""

    PAD = 0
    QUERY = 1
    PASSAGE = 2
    PROMPT = 3  # template text, special tokens and the instruction


@dataclass
class RowState:
    """One row's state without padding: what is cached, serialised and resumed."""

    hidden: Tensor  # (length, hidden)
    segments: Tensor  # (length,) int8
    token_ids: Tensor  # (length,) long, -1 where tokens were merged
    layer: int  # layers applied so far (0 = embeddings)
    compression: float = 1.0  # passage tokens at embedding / passage tokens now (width merges so far)

    @property
    def length(self) -> int:
        """Number of real tokens."""
        return int(self.hidden.shape[0])


@dataclass
class LayerState:
    """A right-padded batch after `layer` layers; positions always count 0..len-1 per row."""

    hidden: Tensor  # (batch, length, hidden)
    mask: Tensor  # (batch, length) bool, True for real tokens, right padding
    segments: Tensor  # (batch, length) int8, Segment values
    token_ids: Tensor  # (batch, length) long input ids, -1 for padding and merged tokens
    layer: int
    # (batch,) fp32 passage compression factor of each row so far; None means no row was merged.
    compression: Tensor | None = None
    # Per-shape tensors a backbone derives once (attention mask, rotary tables); dropped on any reshape.
    aux: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def batch_size(self) -> int:
        """Rows in the batch."""
        return int(self.hidden.shape[0])

    @property
    def lengths(self) -> Tensor:
        """(batch,) real token count of each row."""
        return self.mask.sum(dim=1)

    @property
    def positions(self) -> Tensor:
        """(batch, length) position ids: reset to 0..len-1 after every merge."""
        n = self.hidden.shape[1]
        return torch.arange(n, device=self.hidden.device).unsqueeze(0).expand(self.batch_size, n)

    @property
    def compression_factors(self) -> Tensor:
        """(batch,) fp32 factor by which each row's passage was compressed so far (1 = full width)."""
        if self.compression is None:
            return torch.ones(self.batch_size, device=self.hidden.device)
        return self.compression

    def advanced(self, hidden: Tensor, layer: int) -> LayerState:
        """The same rows after one more layer: new hidden states, same shape, shared aux tables."""
        return LayerState(
            hidden=hidden,
            mask=self.mask,
            segments=self.segments,
            token_ids=self.token_ids,
            layer=layer,
            compression=self.compression,
            aux=self.aux,
        )

    def select(self, rows: Tensor) -> LayerState:
        """Keep the given rows (a long index tensor) and trim padding no remaining row needs."""
        mask = self.mask.index_select(0, rows)
        keep = int(mask.sum(dim=1).max().item()) if rows.numel() else 0
        return LayerState(
            hidden=self.hidden.index_select(0, rows)[:, :keep],
            mask=mask[:, :keep],
            segments=self.segments.index_select(0, rows)[:, :keep],
            token_ids=self.token_ids.index_select(0, rows)[:, :keep],
            layer=self.layer,
            compression=None if self.compression is None else self.compression.index_select(0, rows),
        )

    def row(self, i: int) -> RowState:
        """Row i without padding (a copy, safe to keep after the batch moves on)."""
        n = int(self.mask[i].sum().item())
        return RowState(
            hidden=self.hidden[i, :n].clone(),
            segments=self.segments[i, :n].clone(),
            token_ids=self.token_ids[i, :n].clone(),
            layer=self.layer,
            compression=float(self.compression_factors[i]),
        )

    @staticmethod
    def from_rows(rows: list[RowState]) -> LayerState:
        """Right-pad rows that are all at the same layer into one batch."""
        if not rows:
            raise ValueError("from_rows needs at least one row")
        layers = {r.layer for r in rows}
        if len(layers) != 1:
            raise ValueError(f"rows are at different layers {sorted(layers)}; batch them per layer")
        width = max(r.length for r in rows)
        first = rows[0].hidden
        hidden = first.new_zeros((len(rows), width, first.shape[-1]))
        mask = torch.zeros((len(rows), width), dtype=torch.bool, device=first.device)
        segments = torch.zeros((len(rows), width), dtype=torch.int8, device=first.device)
        token_ids = torch.full((len(rows), width), -1, dtype=torch.long, device=first.device)
        for i, r in enumerate(rows):
            hidden[i, : r.length] = r.hidden
            mask[i, : r.length] = True
            segments[i, : r.length] = r.segments
            token_ids[i, : r.length] = r.token_ids
        compression = torch.tensor([r.compression for r in rows], device=first.device)
        return LayerState(
            hidden=hidden,
            mask=mask,
            segments=segments,
            token_ids=token_ids,
            layer=rows[0].layer,
            compression=None if bool((compression == 1).all()) else compression,
        )

    @staticmethod
    def concat(states: list[LayerState]) -> LayerState:
        """Stack batches at the same layer, re-padding to the longest row."""
        if len(states) == 1:
            return states[0]
        return LayerState.from_rows([s.row(i) for s in states for i in range(s.batch_size)])
