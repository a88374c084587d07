"""Decoder "Yes"-logit re-rankers: the LM head's answer-token logit at the last prompt token.

- bge layout (bge-reranker-v2-gemma; also Gemma 2, Llama, Qwen2, Mistral causal LMs): the score is
  the "Yes" logit (soft-capped as the model's own LM head does, Gemma 2).
- Qwen3-Reranker layout: p(yes) = softmax over ("no", "yes") logits, i.e. sigmoid of "yes" - "no";
  the score is that difference, one linear read-out.
The read-out goes through the final norm, so every layer can be read (a logit lens: untrained below
full depth).
"""

from __future__ import annotations

from typing import Any

from matryoshka.model.backbone import Backbone, DecoderBackbone
from matryoshka.model.families.base import (
    CheckpointSource,
    Family,
    UnsupportedCheckpointError,
    finish,
    load_tokenizer,
)
from matryoshka.model.families.prompts import bge_prompt, qwen3_prompt
from matryoshka.model.matryoshka_model import MatryoshkaModel
from matryoshka.model.prompt import PromptTemplate
from matryoshka.model.readout import LinearReadout, ReadoutScorer

BGE_ARCHITECTURES = frozenset(
    {
        "GemmaForCausalLM",
        "Gemma2ForCausalLM",
        "LlamaForCausalLM",
        "Qwen2ForCausalLM",
        "MistralForCausalLM",
    }
)
QWEN3_ARCHITECTURES = frozenset({"Qwen3ForCausalLM"})


def answer_readout(backbone: DecoderBackbone, tokenizer: Any, qwen3: bool) -> LinearReadout:
    """The "Yes" row of the LM head (bge), or the "yes" minus "no" rows (Qwen3-Reranker)."""
    rows = backbone.lm_head.weight
    if qwen3:
        yes, no = tokenizer.convert_tokens_to_ids("yes"), tokenizer.convert_tokens_to_ids("no")
        if None in (yes, no) or tokenizer.unk_token_id in (yes, no):
            raise UnsupportedCheckpointError("a Qwen3 re-ranker's tokenizer needs the tokens 'yes' and 'no'")
        return LinearReadout(rows[yes].float() - rows[no].float())
    yes = tokenizer("Yes", add_special_tokens=False)["input_ids"][0]
    return LinearReadout(rows[yes], softcap=getattr(backbone.config, "final_logit_softcapping", None))


def build_yes_logit(source: CheckpointSource) -> MatryoshkaModel:
    """Load a causal LM re-ranker and read its answer logit at every layer."""
    from transformers import AutoModelForCausalLM

    hf: Any = AutoModelForCausalLM.from_pretrained(
        source.directory, dtype=source.dtype, local_files_only=True, trust_remote_code=False
    )
    hf = finish(hf, source)
    tokenizer = load_tokenizer(source)
    backbone = Backbone.wrap(hf)
    assert isinstance(backbone, DecoderBackbone)
    qwen3 = hf.config.model_type == "qwen3"
    template: PromptTemplate
    if qwen3:
        template = qwen3_prompt(tokenizer)
    else:
        bos = tokenizer.bos_token_id
        template = bge_prompt(tokenizer, bos if bos is not None and bos != tokenizer.pad_token_id else None)
    head = answer_readout(backbone, tokenizer, qwen3)
    scorer = ReadoutScorer(backbone, dict.fromkeys(range(1, backbone.num_layers + 1), head))
    scorer.to(backbone.device)
    return MatryoshkaModel(source.name, backbone, tokenizer, template, scorer, source.fingerprint)


YES_LOGIT = Family(
    name="yes-logit",
    architectures=BGE_ARCHITECTURES | QWEN3_ARCHITECTURES,
    build=build_yes_logit,
    summary='decoder LM: "Yes" logit (bge-reranker-v2-gemma) or "yes" - "no" (Qwen3-Reranker) at every layer',
)
