"""An independent MiniCPM layerwise forward written from the published model's math (eager, one
unpadded sequence): the reference the engine's folded-Llama execution is checked against."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def layerwise_scores(directory: Path, input_ids: list[int]) -> dict[int, float]:
    """Score of the last token at every cutoff layer from start_layer: head(norm(h_after_l))."""
    c = json.loads((directory / "config.json").read_text())
    w = load_file(directory / "model.safetensors")
    hidden, heads, kv = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"]
    dim, eps, layers = hidden // heads, c["rms_norm_eps"], c["num_hidden_layers"]
    residual = c["scale_depth"] / math.sqrt(layers)
    n = len(input_ids)
    inv_freq = 1.0 / (c["rope_theta"] ** (torch.arange(0, dim, 2).float() / dim))
    angles = torch.outer(torch.arange(n).float(), inv_freq)
    cos, sin = torch.cat((angles, angles), -1).cos(), torch.cat((angles, angles), -1).sin()
    causal = torch.full((n, n), float("-inf")).triu(1)
    h = w["model.embed_tokens.weight"][torch.tensor(input_ids)] * c["scale_emb"]
    scores = {}
    for i in range(layers):
        p = f"model.layers.{i}."
        x = rms_norm(h, w[p + "input_layernorm.weight"], eps)
        q = (x @ w[p + "self_attn.q_proj.weight"].T).view(n, heads, dim).transpose(0, 1)
        k = (x @ w[p + "self_attn.k_proj.weight"].T).view(n, kv, dim).transpose(0, 1)
        v = (x @ w[p + "self_attn.v_proj.weight"].T).view(n, kv, dim).transpose(0, 1)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        k, v = k.repeat_interleave(heads // kv, 0), v.repeat_interleave(heads // kv, 0)
        attn = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(dim) + causal, -1) @ v
        h = h + residual * (attn.transpose(0, 1).reshape(n, hidden) @ w[p + "self_attn.o_proj.weight"].T)
        x = rms_norm(h, w[p + "post_attention_layernorm.weight"], eps)
        gate, up = x @ w[p + "mlp.gate_proj.weight"].T, x @ w[p + "mlp.up_proj.weight"].T
        h = h + residual * ((torch.nn.functional.silu(gate) * up) @ w[p + "mlp.down_proj.weight"].T)
        layer = i + 1
        if layer >= c["start_layer"]:
            head = w[f"lm_head.{layer - c['start_layer']}.linear_head.weight"]
            scores[layer] = float(rms_norm(h[-1], w["model.norm.weight"], eps) @ head[0])
    return scores
