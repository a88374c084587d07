"""The published lightweight forward for one unpadded sequence (FlagEmbedding's CostWiseGemmaModel
math, layer by layer on transformers' Gemma 2 layers): the reference for the engine's width plans."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor
from transformers import Gemma2ForCausalLM
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask


def compress(hidden: Tensor, query_len: int, prompt_len: int, ratio: int) -> Tensor:
    """token_compress for one row: passage tokens (between query and prompt) averaged in runs of `ratio`."""
    passage = hidden[:, query_len : hidden.shape[1] - prompt_len]
    pooled = [passage[:, i : i + ratio].mean(dim=1, keepdim=True) for i in range(0, passage.shape[1], ratio)]
    return torch.cat([hidden[:, :query_len], *pooled, hidden[:, hidden.shape[1] - prompt_len :]], dim=1)


def lightweight_scores(
    directory: Path, input_ids: list[int], lengths: tuple[int, int], compress_layers: list[int], ratio: int
) -> dict[int, float]:
    """Scores at every head layer: cutoff hidden states are read before a compression at that index.
    The Gemma 2 body is the one saved beside the checkpoint (tests/unit/checkpoints.py)."""
    hf: Any = Gemma2ForCausalLM.from_pretrained(directory.with_name(directory.name + "-body")).eval()
    config, body = hf.config, hf.model
    published = json.loads((directory / "config.json").read_text())
    start, sep = published["start_layer"], published["layer_sep"]
    heads = load_file(directory / "model.safetensors")
    cap = config.final_logit_softcapping

    def score(hidden: Tensor, layer: int) -> float:
        logit = body.norm(hidden[0, -1]) @ heads[f"lm_head.{(layer - start) // sep}.linear_head.weight"][0]
        return float(torch.tanh(logit / cap) * cap)

    query_len, prompt_len = lengths
    h = body.embed_tokens(torch.tensor([input_ids]))
    scores = {}
    with torch.no_grad():
        for idx, layer in enumerate(body.layers):
            if idx >= start and (idx - start) % sep == 0:
                scores[idx] = score(h, idx)
            if idx in compress_layers and idx != 0 and ratio > 1:
                h = compress(h, query_len, prompt_len, ratio)
            pos = torch.arange(h.shape[1]).unsqueeze(0)
            kwargs = {
                "config": config,
                "inputs_embeds": h,
                "attention_mask": None,
                "past_key_values": None,
                "position_ids": pos,
            }
            sliding = config.layer_types[idx] == "sliding_attention"
            mask = (create_sliding_window_causal_mask if sliding else create_causal_mask)(**kwargs)
            h = layer(h, attention_mask=mask, position_embeddings=body.rotary_emb(h, pos), position_ids=pos)
        last = len(body.layers)
        if last >= start and (last - start) % sep == 0:
            scores[last] = score(h, last)
    return scores
