"""Cost accounting: FLOPs per layer for rows of given lengths, usage per request, and a latency
model calibrated online (seconds per FLOP) that predicts how long the next step will take."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from matryoshka.model.backbone import Backbone, DecoderBackbone
from matryoshka.model.heads import Scorer


class FlopCounter:
    """FLOPs (2 x multiply-adds) of one backbone, per row, from its token count."""

    def __init__(self, backbone: Backbone, scorer: Scorer) -> None:
        self.params = backbone.matmul_params_per_layer()
        self.attn_dim = backbone.num_heads * backbone.head_dim
        kv_heads = getattr(backbone, "num_kv_heads", backbone.num_heads)
        self.kv_dim = kv_heads * backbone.head_dim
        self.hidden = backbone.hidden_size
        self.num_layers = backbone.num_layers
        self.scorer = scorer
        self.causal = isinstance(backbone, DecoderBackbone)

    def layer_rows(self, lengths: Tensor) -> Tensor:
        """(rows,) FLOPs of one layer per row: projections + MLP, plus QK^T and AV."""
        n = lengths.double()
        return 2 * self.params * n + 4 * self.attn_dim * n * n

    def layer(self, lengths: Tensor) -> float:
        """One layer over rows of these lengths."""
        return float(self.layer_rows(lengths).sum())

    def merge_rows(self, lengths: Tensor) -> Tensor:
        """(rows,) FLOPs of the anchor's attention row for width merging (k of every token, one q)."""
        n = lengths.double()
        return 2 * self.hidden * self.kv_dim * n + 2 * self.attn_dim * n

    def score(self, rows: int, query_tokens: int) -> float:
        """Scoring `rows` rows at one head layer."""
        return float(rows * self.scorer.flops_per_row(query_tokens))

    def full(self, lengths: Tensor, query_tokens: int) -> float:
        """A plain full-depth, full-width run of these rows, scored once at the last layer."""
        return self.num_layers * self.layer(lengths) + self.score(int(lengths.numel()), query_tokens)


@dataclass
class Usage:
    """What a request cost: layer-tokens and FLOPs processed, against a full-depth run, and what the
    layer-state cache stood in for (reported apart: a cache hit is not work saved by an early exit)."""

    layer_tokens: int = 0
    flops: float = 0.0
    full_flops: float = 0.0
    cached_flops: float = 0.0  # FLOPs earlier requests spent on the cached layers reused here
    cache_hits: int = 0  # rows (documents, or windows when chunked) answered from cached scores
    cache_resumed: int = 0  # rows resumed from a cached layer state
    rows: int = 0  # rows the engine scored: documents, or windows when chunked

    @property
    def flops_saved(self) -> float:
        """Fraction of the full-depth FLOPs not needed, counting cached work as spent (0 when nothing
        was to be done)."""
        spent = self.flops + self.cached_flops
        return 1.0 - spent / self.full_flops if self.full_flops > 0 else 0.0

    def add(self, other: Usage) -> None:
        """Accumulate another usage into this one."""
        self.layer_tokens += other.layer_tokens
        self.flops += other.flops
        self.full_flops += other.full_flops
        self.cached_flops += other.cached_flops
        self.cache_hits += other.cache_hits
        self.cache_resumed += other.cache_resumed
        self.rows += other.rows


class LatencyModel:
    """Seconds per FLOP on this machine, as an exponential moving average of observed layer steps."""

    def __init__(self, seconds_per_flop: float = 1e-10, smoothing: float = 0.2) -> None:
        self.seconds_per_flop = seconds_per_flop
        self.smoothing = smoothing
        self.observations = 0

    def observe(self, flops: float, seconds: float) -> None:
        """Fold in one measured step (FLOPs including padding, wall seconds)."""
        if flops <= 0 or seconds <= 0:
            return
        rate = seconds / flops
        if self.observations == 0:
            self.seconds_per_flop = rate
        else:
            self.seconds_per_flop += self.smoothing * (rate - self.seconds_per_flop)
        self.observations += 1

    def predict(self, flops: float) -> float:
        """Predicted seconds for a step of `flops` FLOPs."""
        return flops * self.seconds_per_flop
