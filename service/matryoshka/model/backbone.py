"""Backbones run one layer at a time: decoder LLMs (Llama family) and BERT-style encoders.

A backbone turns token ids into a LayerState at layer 0, applies layer i to a state at layer i-1,
and exposes what heads and width merging need: the anchor token (whose hidden state is scored),
its attention row over the keys of a layer, and the normalised hidden state at the anchor.
Every layer reuses the Hugging Face module itself, so layer-by-layer equals the model's own forward.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel
from transformers.masking_utils import (
    create_bidirectional_mask,
    create_causal_mask,
    create_sliding_window_causal_mask,
)

from matryoshka.model.state import LayerState

Family = Literal["decoder", "encoder"]

# Decoder families whose modules share the Llama layout (embed_tokens, layers, norm, rotary_emb).
# Gemma scales its embeddings inside embed_tokens; Gemma 2 alternates sliding and full attention
# layers and soft-caps attention logits; Qwen 3 normalises q and k per head.
DECODER_TYPES = frozenset({"llama", "qwen2", "mistral", "gemma", "gemma2", "qwen3"})
ENCODER_TYPES = frozenset({"bert", "roberta", "xlm-roberta"})
# RoBERTa-style embeddings number real tokens from pad_token_id + 1.
OFFSET_POSITION_TYPES = frozenset({"roberta", "xlm-roberta"})


def _rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Backbone(nn.Module):
    """Common interface; concrete classes wrap one Hugging Face model family."""

    family: Family

    def __init__(self, hf_model: PreTrainedModel) -> None:
        super().__init__()
        self.hf_model = hf_model
        self.config = hf_model.config
        self.num_layers: int = int(self.config.num_hidden_layers)
        self.hidden_size: int = int(self.config.hidden_size)
        self.num_heads: int = int(self.config.num_attention_heads)
        self.head_dim: int = int(getattr(self.config, "head_dim", None) or self.hidden_size // self.num_heads)
        # Factorized V/H-LoRA adapters (model/compensation.py) register themselves here when installed.
        self.compensation: Any = None

    @staticmethod
    def wrap(hf_model: PreTrainedModel) -> Backbone:
        """Wrap a loaded Hugging Face model (a causal LM or a BERT encoder) by its model type."""
        model_type = hf_model.config.model_type
        if model_type in DECODER_TYPES:
            return DecoderBackbone(hf_model)
        if model_type in ENCODER_TYPES:
            return EncoderBackbone(hf_model)
        supported = sorted(DECODER_TYPES | ENCODER_TYPES)
        raise ValueError(f"unsupported backbone model_type {model_type!r}; supported: {supported}")

    @property
    def dtype(self) -> torch.dtype:
        """Parameter dtype of the backbone."""
        return next(self.hf_model.parameters()).dtype

    @property
    def device(self) -> torch.device:
        """Device the backbone's parameters live on."""
        return next(self.hf_model.parameters()).device

    def layer_module(self, layer: int) -> nn.Module:
        """The module of layer `layer` (1-based, as in the paper)."""
        raise NotImplementedError

    def matmul_params_per_layer(self) -> int:
        """Weights a token multiplies through in one layer (for FLOP counts)."""
        return sum(p.numel() for p in self.layer_module(1).parameters() if p.dim() == 2)

    def embed(self, input_ids: Tensor, mask: Tensor, segments: Tensor, token_types: Tensor) -> LayerState:
        """Token ids (right-padded) to the layer-0 state."""
        raise NotImplementedError

    def forward_layer(self, layer: int, state: LayerState) -> LayerState:
        """Apply layer `layer` (1-based) to a state at layer `layer - 1`."""
        raise NotImplementedError

    def anchor_index(self, state: LayerState) -> Tensor:
        """(batch,) index of the token each row is scored at."""
        raise NotImplementedError

    def anchor_attention(self, layer: int, state: LayerState) -> Tensor:
        """(batch, length) fp32 attention of the anchor over all keys in layer `layer`, mean over heads.

        Computed from that layer's own q/k projections on its input (q_anchor . K^T), so the model keeps
        its fused sdpa path; padded keys get weight 0 and each row sums to 1.
        """
        raise NotImplementedError

    def pooled(self, state: LayerState) -> Tensor:
        """(batch, hidden) the anchor's hidden state as a head reads it."""
        raise NotImplementedError

    def _enter(self, layer: int, state: LayerState) -> None:
        """Check that `state` can enter `layer`, and route its rows to their compensation adapters."""
        if not 1 <= layer <= self.num_layers:
            raise ValueError(f"layer {layer} outside 1..{self.num_layers}")
        if state.layer != layer - 1:
            raise ValueError(f"layer {layer} needs a state at layer {layer - 1}, got {state.layer}")
        if self.compensation is not None:
            self.compensation.select(layer, state.compression_factors)

    @staticmethod
    def _masked_softmax_mean(scores: Tensor, key_mask: Tensor) -> Tensor:
        """scores (batch, heads, length) -> head-mean softmax over the keys allowed by key_mask."""
        scores = scores.float().masked_fill(~key_mask.unsqueeze(1), float("-inf"))
        return torch.softmax(scores, dim=-1).mean(dim=1)


class DecoderBackbone(Backbone):
    """Llama-layout causal LM (SmolLM2, Llama, Qwen2/3, Gemma 1/2, Mistral within its sliding window)."""

    family: Family = "decoder"

    def __init__(self, hf_model: PreTrainedModel) -> None:
        super().__init__(hf_model)
        inner = hf_model.model
        self.embed_tokens: Any = inner.embed_tokens
        self.layers: Any = inner.layers
        self.norm: Any = inner.norm
        self.rotary_emb: Any = inner.rotary_emb
        self.lm_head: Any = hf_model.get_output_embeddings()
        self.num_kv_heads = int(getattr(self.config, "num_key_value_heads", None) or self.num_heads)
        types = getattr(self.config, "layer_types", None)
        self.layer_types: tuple[str, ...] = tuple(types or ("full_attention",) * self.num_layers)
        self.attn_softcap: float | None = getattr(self.config, "attn_logit_softcapping", None)

    def layer_module(self, layer: int) -> nn.Module:
        return self.layers[layer - 1]  # type: ignore[no-any-return]

    def embed(self, input_ids: Tensor, mask: Tensor, segments: Tensor, token_types: Tensor) -> LayerState:
        hidden = self.embed_tokens(input_ids)
        return LayerState(
            hidden=hidden, mask=mask, segments=segments, token_ids=input_ids.masked_fill(~mask, -1), layer=0
        )

    def _aux(self, state: LayerState, layer: int) -> tuple[Tensor | None, tuple[Tensor, Tensor]]:
        """The attention mask of `layer`'s type and the rotary tables, built once per state shape."""
        kind = self.layer_types[layer - 1]
        if "rope" not in state.aux:
            state.aux["rope"] = self.rotary_emb(state.hidden, position_ids=state.positions)
        if kind not in state.aux:
            build = create_sliding_window_causal_mask if kind == "sliding_attention" else create_causal_mask
            state.aux[kind] = build(
                config=self.config,
                inputs_embeds=state.hidden,
                attention_mask=state.mask.long(),
                past_key_values=None,  # `cache` from 5.24 on; this name works across >=5.23,<5.40
                position_ids=state.positions,
            )
        return state.aux[kind], state.aux["rope"]

    def forward_layer(self, layer: int, state: LayerState) -> LayerState:
        self._enter(layer, state)
        mask4d, rope = self._aux(state, layer)
        hidden = self.layers[layer - 1](
            state.hidden, attention_mask=mask4d, position_ids=state.positions, position_embeddings=rope
        )
        return state.advanced(hidden, layer)

    def anchor_index(self, state: LayerState) -> Tensor:
        return state.lengths - 1  # right padding: the last real token

    def anchor_attention(self, layer: int, state: LayerState) -> Tensor:
        self._enter(layer, state)
        block: Any = self.layers[layer - 1]
        attn = block.self_attn
        _, (cos, sin) = self._aux(state, layer)
        batch, length, _ = state.hidden.shape
        rows = torch.arange(batch, device=state.hidden.device)
        anchor = self.anchor_index(state)
        normed = block.input_layernorm(state.hidden)
        q = attn.q_proj(normed[rows, anchor]).view(batch, self.num_heads, self.head_dim)
        k = attn.k_proj(normed).view(batch, length, self.num_kv_heads, self.head_dim)
        if hasattr(attn, "q_norm"):  # Qwen 3: RMS norm over each head's q and k before rotary
            q, k = attn.q_norm(q), attn.k_norm(k)
        q = q * cos[rows, anchor].unsqueeze(1) + _rotate_half(q) * sin[rows, anchor].unsqueeze(1)
        k = k * cos.unsqueeze(2) + _rotate_half(k) * sin.unsqueeze(2)
        k = k.repeat_interleave(self.num_heads // self.num_kv_heads, dim=2)  # (batch, length, heads, dim)
        scores = torch.einsum("bhd,blhd->bhl", q, k) * attn.scaling
        if self.attn_softcap is not None:  # Gemma 2
            scores = torch.tanh(scores / self.attn_softcap) * self.attn_softcap
        keys = torch.arange(length, device=anchor.device).unsqueeze(0)
        allowed = keys <= anchor.unsqueeze(1)
        if self.layer_types[layer - 1] == "sliding_attention":
            allowed &= keys > anchor.unsqueeze(1) - int(self.config.sliding_window)
        return self._masked_softmax_mean(scores, state.mask & allowed)

    def pooled(self, state: LayerState) -> Tensor:
        rows = torch.arange(state.batch_size, device=state.hidden.device)
        return self.norm(state.hidden[rows, self.anchor_index(state)])  # type: ignore[no-any-return]


class EncoderBackbone(Backbone):
    """BERT-style bidirectional encoder (MiniLM, RoBERTa, XLM-RoBERTa): the first token is the anchor."""

    family: Family = "encoder"

    def __init__(self, hf_model: PreTrainedModel) -> None:
        super().__init__(hf_model)
        encoder: Any = hf_model
        self.embeddings: Any = encoder.embeddings
        self.layers: Any = encoder.encoder.layer
        offset = self.config.model_type in OFFSET_POSITION_TYPES
        self.position_offset = int(self.config.pad_token_id) + 1 if offset else 0

    def layer_module(self, layer: int) -> nn.Module:
        return self.layers[layer - 1]  # type: ignore[no-any-return]

    def embed(self, input_ids: Tensor, mask: Tensor, segments: Tensor, token_types: Tensor) -> LayerState:
        positions = (
            torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0) + self.position_offset
        )
        hidden = self.embeddings(input_ids=input_ids, token_type_ids=token_types, position_ids=positions)
        return LayerState(
            hidden=hidden, mask=mask, segments=segments, token_ids=input_ids.masked_fill(~mask, -1), layer=0
        )

    def _mask4d(self, state: LayerState) -> Tensor | None:
        if "mask4d" not in state.aux:
            state.aux["mask4d"] = create_bidirectional_mask(
                config=self.config, inputs_embeds=state.hidden, attention_mask=state.mask.long()
            )
        return state.aux["mask4d"]  # type: ignore[no-any-return]

    def forward_layer(self, layer: int, state: LayerState) -> LayerState:
        self._enter(layer, state)
        hidden = self.layers[layer - 1](state.hidden, attention_mask=self._mask4d(state))
        return state.advanced(hidden, layer)

    def anchor_index(self, state: LayerState) -> Tensor:
        return torch.zeros(state.batch_size, dtype=torch.long, device=state.hidden.device)

    def anchor_attention(self, layer: int, state: LayerState) -> Tensor:
        self._enter(layer, state)
        attn: Any = self.layers[layer - 1].attention.self
        batch, length, _ = state.hidden.shape
        q = attn.query(state.hidden[:, 0]).view(batch, self.num_heads, self.head_dim)
        k = attn.key(state.hidden).view(batch, length, self.num_heads, self.head_dim)
        scores = torch.einsum("bhd,blhd->bhl", q, k) * attn.scaling
        return self._masked_softmax_mean(scores, state.mask)

    def pooled(self, state: LayerState) -> Tensor:
        return state.hidden[:, 0]
