"""Layerwise re-rankers: a trained score head per layer from a start layer (the
bge-reranker-v2-minicpm-layerwise layout, `LayerWiseMiniCPMForCausalLM`); every head layer is an exit.

MiniCPM is Llama with three scalars: embeddings times `scale_emb`, and each attention and MLP output
times `scale_depth / sqrt(num_hidden_layers)` before its residual add. Those products are linear, so
they are folded into `embed_tokens`, `o_proj` and `down_proj` and the checkpoint runs as a Llama
built here from its config (its repository code is never run). The head at layer l
(`lm_head.{l - start_layer}.linear_head`, head_type "simple") reads the final-normed last token.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from matryoshka.model.backbone import Backbone
from matryoshka.model.families.base import (
    CheckpointSource,
    Family,
    UnsupportedCheckpointError,
    finish,
    load_tokenizer,
)
from matryoshka.model.families.prompts import bge_prompt
from matryoshka.model.matryoshka_model import MatryoshkaModel
from matryoshka.model.readout import LinearReadout, ReadoutScorer

HEAD_KEY = "lm_head.{index}.linear_head.weight"


def llama_config(config: dict[str, Any]) -> Any:
    """The Llama configuration a MiniCPM config describes (rope without scaling only)."""
    from transformers import LlamaConfig

    if config.get("rope_scaling"):
        raise UnsupportedCheckpointError(
            f"MiniCPM rope_scaling {config['rope_scaling']} is not supported; only none"
        )
    hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
    return LlamaConfig(
        vocab_size=config["vocab_size"],
        hidden_size=hidden,
        intermediate_size=config["intermediate_size"],
        num_hidden_layers=config["num_hidden_layers"],
        num_attention_heads=heads,
        num_key_value_heads=config.get("num_key_value_heads") or heads,
        head_dim=hidden // heads,
        hidden_act=config.get("hidden_act", "silu"),
        max_position_embeddings=config.get("max_position_embeddings", 2048),
        rms_norm_eps=config.get("rms_norm_eps", 1e-6),
        rope_parameters={"rope_type": "default", "rope_theta": float(config.get("rope_theta", 10000.0))},
        attention_bias=bool(config.get("attention_bias", False)),
        tie_word_embeddings=True,  # the LM head is never read: scores come from the per-layer heads
        bos_token_id=config.get("bos_token_id"),
        pad_token_id=config.get("pad_token_id"),
    )


def read_weights(directory: Path) -> dict[str, Tensor]:
    """Every tensor of the checkpoint's safetensors files."""
    from safetensors.torch import load_file

    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise UnsupportedCheckpointError(
            f"{directory} has no .safetensors weights (the layerwise family reads only those)"
        )
    weights: dict[str, Tensor] = {}
    for path in files:
        weights.update(load_file(path))
    return weights


def fold_scales(weights: dict[str, Tensor], config: dict[str, Any]) -> dict[str, Tensor]:
    """MiniCPM's embedding and residual scales multiplied into the weights they follow."""
    residual = float(config.get("scale_depth", 1.0)) / math.sqrt(int(config["num_hidden_layers"]))
    folded = dict(weights)
    folded["model.embed_tokens.weight"] = weights["model.embed_tokens.weight"] * float(
        config.get("scale_emb", 1)
    )
    for key, value in weights.items():
        if key.endswith(("self_attn.o_proj.weight", "self_attn.o_proj.bias", "mlp.down_proj.weight")):
            folded[key] = value * residual
    return folded


def build_layerwise(source: CheckpointSource) -> MatryoshkaModel:
    """Load a layerwise MiniCPM re-ranker as a Llama with one trained head per layer from its start layer."""
    from transformers import LlamaForCausalLM
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    config = source.config
    if config.get("head_type", "simple") != "simple" or not config.get("head_multi", True):
        raise UnsupportedCheckpointError(
            "layerwise re-rankers are supported with head_type 'simple' and head_multi only"
        )
    llama = llama_config(config)
    weights = fold_scales(read_weights(source.directory), config)
    start, layers = int(config.get("start_layer", 8)), int(config["num_hidden_layers"])
    heads = {layer: weights.pop(HEAD_KEY.format(index=layer - start)) for layer in range(start, layers + 1)}
    with torch.device("meta"):
        hf: Any = LlamaForCausalLM(llama)
    body = {k: v.to(source.dtype) for k, v in weights.items() if k.startswith("model.")}
    missing, unexpected = hf.load_state_dict(body, strict=False, assign=True)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise UnsupportedCheckpointError(
            f"not a MiniCPM layerwise checkpoint: missing {missing}, unexpected {unexpected}"
        )
    hf.tie_weights()
    hf.model.rotary_emb = LlamaRotaryEmbedding(llama)  # its inverse frequencies are not in the file
    hf = finish(hf, source)
    tokenizer = load_tokenizer(source)
    backbone = Backbone.wrap(hf)
    scorer = ReadoutScorer(backbone, {layer: LinearReadout(w) for layer, w in heads.items()})
    scorer.to(backbone.device)
    template = bge_prompt(tokenizer, tokenizer.bos_token_id)
    return MatryoshkaModel(source.name, backbone, tokenizer, template, scorer, source.fingerprint)


LAYERWISE = Family(
    name="layerwise",
    architectures=frozenset({"LayerWiseMiniCPMForCausalLM"}),
    build=build_layerwise,
    summary="MiniCPM with a trained head per layer from start_layer (bge-reranker-v2-minicpm-layerwise)",
)
