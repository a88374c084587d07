"""Split-pair scoring: a sentence-embedding encoder (all-MiniLM-L6-v2) as a Matryoshka re-ranker.

A row is laid out as "[CLS] query [SEP] [CLS] passage [SEP]" (`SplitPairPrompt`), but the two sides
never see each other: the attention mask is block-diagonal, positions restart at 0 on the passage side
and every token type is 0. Each side therefore gets exactly the hidden states it would get encoded
alone, and at the last layer the cosine of the two mean-pooled sides IS the bi-encoder's score
(sentence-transformers: Transformer -> mean pooling -> normalise). Every layer can score the same way
(`CosineScorer`); an optional per-layer linear map (a "pooled lens", trained by self-distillation
towards the last layer's pooled embedding, train/pooled_lens.py) translates a shallow layer's pooled
embedding into the last layer's space. Width merging acts on passage tokens, weighted by the passage
[CLS]'s attention (the side's own anchor).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from matryoshka.model.backbone import ENCODER_TYPES, EncoderBackbone
from matryoshka.model.heads import Scorer
from matryoshka.model.prompt import EncodedPair, PromptTemplate, Tokenizer
from matryoshka.model.state import LayerState, Segment


class SplitPairPrompt(PromptTemplate):
    """ "[CLS] query [SEP] [CLS] passage [SEP]" with token types 0: two sentences, one row."""

    name = "split_pair"
    version = "split-pair-v1"

    def __init__(self, tokenizer: Tokenizer, cls_id: int, sep_id: int) -> None:
        super().__init__(tokenizer)
        self.cls_id = cls_id
        self.sep_id = sep_id

    def assemble(self, query_ids: list[int], passage_ids: list[int]) -> EncodedPair:
        ids = [self.cls_id, *query_ids, self.sep_id, self.cls_id, *passage_ids, self.sep_id]
        prompt, query, passage = int(Segment.PROMPT), int(Segment.QUERY), int(Segment.PASSAGE)
        segs = [prompt, *[query] * len(query_ids), prompt, prompt, *[passage] * len(passage_ids), prompt]
        return EncodedPair(input_ids=ids, segments=segs, token_types=[0] * len(ids))


def query_side(segments: Tensor, mask: Tensor) -> Tensor:
    """(batch, length) bool: the tokens of the query sentence, "[CLS] query [SEP]".

    Query and prompt tokens are never merged and keep their order, so the query side is always the
    first (query tokens + 2) positions of a row, before and after width merging.
    """
    n_side = (segments == Segment.QUERY).sum(dim=1, keepdim=True) + 2
    index = torch.arange(mask.shape[1], device=mask.device).unsqueeze(0)
    return (index < n_side) & mask


def side_means(state: LayerState) -> tuple[Tensor, Tensor]:
    """(batch, hidden) fp32 mean-pooled hidden states of the query side and of the passage side."""
    is_query = query_side(state.segments, state.mask)
    is_passage = state.mask & ~is_query
    hidden = state.hidden.float()

    def mean(select: Tensor) -> Tensor:
        weights = select.float().unsqueeze(-1)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)

    return mean(is_query), mean(is_passage)


class SplitEncoderBackbone(EncoderBackbone):
    """A BERT encoder whose rows hold two independent sentences (see the module docstring)."""

    def __init__(self, hf_model: PreTrainedModel) -> None:
        if hf_model.config.model_type not in ENCODER_TYPES:
            kind = hf_model.config.model_type
            raise ValueError(f"split-pair scoring needs a BERT-style encoder, got {kind!r}")
        super().__init__(hf_model)

    def embed(self, input_ids: Tensor, mask: Tensor, segments: Tensor, token_types: Tensor) -> LayerState:
        on_query = query_side(segments, mask)
        index = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        passage_start = on_query.sum(dim=1, keepdim=True)
        positions = torch.where(on_query, index, (index - passage_start).clamp(min=0))
        hidden = self.embeddings(
            input_ids=input_ids, token_type_ids=torch.zeros_like(input_ids), position_ids=positions
        )
        return LayerState(
            hidden=hidden, mask=mask, segments=segments, token_ids=input_ids.masked_fill(~mask, -1), layer=0
        )

    def _mask4d(self, state: LayerState) -> Tensor | None:
        if "mask4d" not in state.aux:
            on_query = query_side(state.segments, state.mask)
            same_side = on_query.unsqueeze(2) == on_query.unsqueeze(1)
            allowed = same_side & state.mask.unsqueeze(1)
            blocked = torch.finfo(state.hidden.dtype).min
            additive = torch.zeros(allowed.shape, dtype=state.hidden.dtype, device=allowed.device)
            state.aux["mask4d"] = additive.masked_fill(~allowed, blocked).unsqueeze(1)
        return state.aux["mask4d"]  # type: ignore[no-any-return]

    def anchor_index(self, state: LayerState) -> Tensor:
        return query_side(state.segments, state.mask).sum(dim=1)  # the passage side's [CLS]

    def anchor_attention(self, layer: int, state: LayerState) -> Tensor:
        self._enter(layer, state)
        attn: Any = self.layers[layer - 1].attention.self
        batch, length, _ = state.hidden.shape
        rows = torch.arange(batch, device=state.hidden.device)
        anchor = state.hidden[rows, self.anchor_index(state)]
        q = attn.query(anchor).view(batch, self.num_heads, self.head_dim)
        k = attn.key(state.hidden).view(batch, length, self.num_heads, self.head_dim)
        scores = torch.einsum("bhd,blhd->bhl", q, k) * attn.scaling
        return self._masked_softmax_mean(scores, state.mask & ~query_side(state.segments, state.mask))

    def pooled(self, state: LayerState) -> Tensor:
        return side_means(state)[1]


class CosineScorer(Scorer):
    """Cosine of the two sides' mean-pooled states, through a per-layer linear map where trained.

    `lens_layers` get a `hidden x hidden` map initialised to the identity (so an untrained lens scores
    exactly as the raw cosine does); the last layer is always read as is, the bi-encoder's own score.
    """

    name = "cosine"

    def __init__(
        self,
        backbone: SplitEncoderBackbone,
        head_layers: Sequence[int] | None = None,
        lens_layers: Sequence[int] = (),
    ) -> None:
        super().__init__(backbone, head_layers or range(1, backbone.num_layers + 1))
        last = backbone.num_layers
        bad = [layer for layer in lens_layers if layer not in self.head_layers or layer == last]
        if bad:
            raise ValueError(f"lens layers must be head layers below the last layer, got {bad}")
        hidden = backbone.hidden_size
        self.lens = nn.ModuleDict({str(layer): nn.Linear(hidden, hidden) for layer in sorted(lens_layers)})
        with torch.no_grad():
            for module in self.lens.values():
                linear: Any = module
                linear.weight.copy_(torch.eye(hidden))
                linear.bias.zero_()

    @property
    def lens_layers(self) -> tuple[int, ...]:
        """Layers whose pooled embeddings go through a trained map before the cosine."""
        return tuple(int(layer) for layer in self.lens)

    def translate(self, layer: int, pooled: Tensor) -> Tensor:
        """Map pooled states of `layer` into the last layer's space (unchanged where no lens)."""
        if str(layer) not in self.lens:
            return pooled
        linear: Any = self.lens[str(layer)]
        unit = torch.nn.functional.normalize(pooled.float(), dim=-1)  # the lens is fitted on unit vectors
        return linear(unit.to(linear.weight.dtype)).float()  # type: ignore[no-any-return]

    def pair_logits(self, layer: int, query: Tensor, passage: Tensor) -> Tensor:
        """(batch,) cosine of already pooled query and passage states of `layer`."""
        q, p = self.translate(layer, query), self.translate(layer, passage)
        return torch.nn.functional.cosine_similarity(q, p, dim=-1)

    def logits(self, state: LayerState) -> Tensor:
        self._check(state)
        query, passage = side_means(state)
        return self.pair_logits(state.layer, query, passage)

    def flops_per_row(self, query_tokens: int) -> int:
        hidden = self.backbone.hidden_size
        return 2 * 2 * hidden * (hidden if self.lens else 1)
