"""Tiny random published-layout checkpoints saved to a directory (transformers' own classes, no hub)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    Gemma2Config,
    Gemma2ForCausalLM,
    PreTrainedTokenizerFast,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from tests.conftest import WORDS

# The test vocabulary plus what the published layouts need: a BOS token and Qwen3's answer words.
VOCAB_WORDS = [*WORDS, "<bos>", "yes", "no", "<|", "|>", "im_start", "im_end", "system", "user", "assistant"]
VOCAB = {w: i for i, w in enumerate(VOCAB_WORDS)}


def tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer with BOS, PAD, CLS and SEP tokens."""
    tok = Tokenizer(WordLevel(VOCAB, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        bos_token="<bos>",
    )


def save(model: Any, directory: Path) -> Path:
    """save_pretrained the model and the tokenizer into `directory`."""
    model.save_pretrained(directory)
    tokenizer().save_pretrained(directory)
    return directory


def bert_cross_encoder(directory: Path, num_labels: int = 1, seed: int = 0) -> Path:
    """A 3-layer BertForSequenceClassification (the ms-marco-MiniLM cross-encoder layout)."""
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=512,
        num_labels=num_labels,
        architectures=["BertForSequenceClassification"],
    )
    return save(BertForSequenceClassification(config).eval(), directory)


def gemma2(directory: Path, seed: int = 0, sliding_window: int = 4096) -> Path:
    """A 4-layer Gemma 2 (alternating sliding / full attention, soft-capping) LM."""
    torch.manual_seed(seed)
    config = Gemma2Config(
        vocab_size=len(VOCAB),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=512,
        sliding_window=sliding_window,
        bos_token_id=VOCAB["<bos>"],
        pad_token_id=VOCAB["[PAD]"],
        architectures=["Gemma2ForCausalLM"],
    )
    return save(Gemma2ForCausalLM(config).eval(), directory)


def qwen3(directory: Path, seed: int = 0) -> Path:
    """A 3-layer Qwen3 (q/k norms) LM: the Qwen3-Reranker layout."""
    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=len(VOCAB),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        architectures=["Qwen3ForCausalLM"],
    )
    return save(Qwen3ForCausalLM(config).eval(), directory)


def minicpm_layerwise(directory: Path, seed: int = 0, layers: int = 4, start_layer: int = 2) -> Path:
    """A layerwise MiniCPM re-ranker as published: config.json naming remote code it must never run,
    Llama-named body weights and one `lm_head.{i}.linear_head` per layer from `start_layer`."""
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    hidden, heads, kv_heads = 64, 4, 2
    body = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(VOCAB),
            hidden_size=hidden,
            intermediate_size=128,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
        )
    )
    weights = {k: v.contiguous() for k, v in body.state_dict().items() if k.startswith("model.")}
    for i in range(layers - start_layer + 1):
        weights[f"lm_head.{i}.linear_head.weight"] = torch.randn(1, hidden) * 0.2
    directory.mkdir(parents=True)
    save_file(weights, directory / "model.safetensors")
    config = {
        "architectures": ["LayerWiseMiniCPMForCausalLM"],
        "auto_map": {"AutoModelForCausalLM": "modeling_minicpm_reranker.LayerWiseMiniCPMForCausalLM"},
        "model_type": "minicpm",
        "vocab_size": len(VOCAB),
        "hidden_size": hidden,
        "intermediate_size": 128,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "hidden_act": "silu",
        "max_position_embeddings": 512,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "scale_emb": 12,
        "dim_model_base": 256,
        "scale_depth": 1.4,
        "start_layer": start_layer,
        "head_multi": True,
        "head_type": "simple",
        "bos_token_id": VOCAB["<bos>"],
        "pad_token_id": VOCAB["[PAD]"],
    }
    (directory / "config.json").write_text(json.dumps(config))
    tokenizer().save_pretrained(directory)
    return directory


def gemma2_lightweight(directory: Path, seed: int = 0, start_layer: int = 1, layer_sep: int = 1) -> Path:
    """A lightweight re-ranker as published: a Gemma 2 body under `CostWiseGemmaForCausalLM`, with
    one `lm_head.{i}.linear_head` for every `layer_sep`-th layer from `start_layer`."""
    from safetensors.torch import save_file

    body = Gemma2ForCausalLM.from_pretrained(gemma2(directory.with_name(directory.name + "-body"), seed=seed))
    layers = body.config.num_hidden_layers
    weights = {k: v.contiguous() for k, v in body.state_dict().items() if k.startswith("model.")}
    for i, _ in enumerate(range(start_layer, layers + 1, layer_sep)):
        weights[f"lm_head.{i}.linear_head.weight"] = torch.randn(1, body.config.hidden_size) * 0.2
    directory.mkdir(parents=True)
    save_file(weights, directory / "model.safetensors")
    config = {
        **body.config.to_dict(),
        "architectures": ["CostWiseGemmaForCausalLM"],
        "auto_map": {"AutoModelForCausalLM": "gemma_model.CostWiseGemmaForCausalLM"},
        "model_type": "cost_wise_gemma",
        "start_layer": start_layer,
        "layer_sep": layer_sep,
        "layer_wise": True,
    }
    (directory / "config.json").write_text(json.dumps(config))
    tokenizer().save_pretrained(directory)
    return directory


def xlm_roberta_cross_encoder(directory: Path, seed: int = 0) -> Path:
    """A 3-layer XLMRobertaForSequenceClassification (the bge-reranker-base/large/v2-m3 layout)."""
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

    torch.manual_seed(seed)
    config = XLMRobertaConfig(
        vocab_size=len(VOCAB),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=514,
        type_vocab_size=1,
        pad_token_id=VOCAB["[PAD]"],
        num_labels=1,
        architectures=["XLMRobertaForSequenceClassification"],
    )
    return save(XLMRobertaForSequenceClassification(config).eval(), directory)


def gemma(directory: Path, seed: int = 0) -> Path:
    """A 3-layer Gemma (1) LM: the bge-reranker-v2-gemma layout."""
    from transformers import GemmaConfig, GemmaForCausalLM

    torch.manual_seed(seed)
    config = GemmaConfig(
        vocab_size=len(VOCAB),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=512,
        bos_token_id=VOCAB["<bos>"],
        pad_token_id=VOCAB["[PAD]"],
        architectures=["GemmaForCausalLM"],
    )
    return save(GemmaForCausalLM(config).eval(), directory)
