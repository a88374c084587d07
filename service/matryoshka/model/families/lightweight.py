"""Lightweight re-rankers with trained token compression (the bge-reranker-v2.5-gemma2-lightweight
layout, `CostWiseGemmaForCausalLM`): a Gemma 2 body, a score head on every `layer_sep`-th layer from
`start_layer`, and passage compression in uniform windows of 2, 4 or 8 tokens after chosen layers.

Mapped onto plans: head layers are exits (`depth` = the published `cutoff_layers`), and a width step
{layer: ratio} is the published `compress_layers` with `compress_ratio`, pooled the way it was trained
(uniform windows, model/width.py). The body loads as transformers' Gemma 2 from a configuration built
here; heads are `lm_head.{i}.linear_head` for layer start_layer + i * layer_sep, soft-capped like the
LM head. (FlagEmbedding's own inference picks head i by the position of a layer in the requested
cutoff list; the two agree when every head layer from start_layer is requested.)
"""

from __future__ import annotations

from typing import Any

from matryoshka.model.backbone import Backbone
from matryoshka.model.families.base import (
    CheckpointSource,
    Family,
    UnsupportedCheckpointError,
    finish,
    load_tokenizer,
)
from matryoshka.model.families.layerwise import read_weights
from matryoshka.model.families.prompts import bge_prompt
from matryoshka.model.matryoshka_model import MatryoshkaModel
from matryoshka.model.readout import LinearReadout, ReadoutScorer

TRAINED_RATIOS = (2.0, 4.0, 8.0)
HEAD_KEY = "lm_head.{index}.linear_head.weight"
# Keys of CostWiseGemmaConfig that Gemma2Config does not know.
OWN_KEYS = ("start_layer", "layer_sep", "layer_wise", "auto_map", "architectures", "model_type")


def build_lightweight(source: CheckpointSource) -> MatryoshkaModel:
    """Load a lightweight Gemma 2 re-ranker: per-layer heads and uniform trained compression."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    config = source.config
    if not config.get("layer_wise", False):
        raise UnsupportedCheckpointError("lightweight re-rankers are supported with layer_wise heads only")
    gemma2 = Gemma2Config(
        **{k: v for k, v in config.items() if k not in OWN_KEYS}, architectures=["Gemma2ForCausalLM"]
    )
    gemma2.tie_word_embeddings = True  # the LM head is never read: scores come from the per-layer heads
    hf: Any = Gemma2ForCausalLM.from_pretrained(
        source.directory, config=gemma2, dtype=source.dtype, local_files_only=True, trust_remote_code=False
    )
    hf = finish(hf, source)
    weights = read_weights(source.directory)
    start, sep, layers = int(config["start_layer"]), int(config["layer_sep"]), gemma2.num_hidden_layers
    cap = gemma2.final_logit_softcapping
    heads = {
        layer: LinearReadout(weights[HEAD_KEY.format(index=i)], softcap=cap)
        for i, layer in enumerate(range(start, layers + 1, sep))
    }
    tokenizer = load_tokenizer(source)
    backbone = Backbone.wrap(hf)
    scorer = ReadoutScorer(backbone, heads)
    scorer.to(backbone.device)
    template = bge_prompt(tokenizer, tokenizer.bos_token_id)
    model = MatryoshkaModel(source.name, backbone, tokenizer, template, scorer, source.fingerprint)
    model.uniform_width = True
    model.merge_ratios = TRAINED_RATIOS
    return model


LIGHTWEIGHT = Family(
    name="lightweight",
    architectures=frozenset({"CostWiseGemmaForCausalLM"}),
    build=build_lightweight,
    summary="Gemma 2, per-layer heads, trained uniform compression (bge-reranker-v2.5-gemma2-lightweight)",
)
