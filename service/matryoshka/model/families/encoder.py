"""Encoder cross-encoders: BERT with a sequence-classification head (the ms-marco-MiniLM layout).

The checkpoint's pooler + classifier scores [CLS] after the last layer; the same head reads [CLS]
at every shallower layer (untrained there: exits below full depth need calibration to mean much).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from matryoshka.model.backbone import Backbone
from matryoshka.model.families.base import CheckpointSource, Family, finish, load_tokenizer
from matryoshka.model.matryoshka_model import MatryoshkaModel
from matryoshka.model.prompt import EncoderPairPrompt
from matryoshka.model.readout import ClassifierReadout, ReadoutScorer


def build_cross_encoder(source: CheckpointSource) -> MatryoshkaModel:
    """Load a *ForSequenceClassification BERT checkpoint and read its head at every layer."""
    from transformers import AutoModelForSequenceClassification

    hf: Any = AutoModelForSequenceClassification.from_pretrained(
        source.directory, dtype=source.dtype, local_files_only=True, trust_remote_code=False
    )
    hf = finish(hf, source)
    tokenizer = load_tokenizer(source)
    backbone = Backbone.wrap(hf.base_model)
    pooler = hf.base_model.pooler
    head = ClassifierReadout(
        nn.Sequential(pooler.dense, pooler.activation) if pooler is not None else None, hf.classifier
    )
    scorer = ReadoutScorer(backbone, dict.fromkeys(range(1, backbone.num_layers + 1), head))
    scorer.to(backbone.device)
    template = EncoderPairPrompt(tokenizer, tokenizer.cls_token_id, tokenizer.sep_token_id)
    return MatryoshkaModel(source.name, backbone, tokenizer, template, scorer, source.fingerprint)


CROSS_ENCODER = Family(
    name="cross-encoder",
    architectures=frozenset({"BertForSequenceClassification"}),
    build=build_cross_encoder,
    summary="BERT + classification head (ms-marco-MiniLM cross-encoders): [CLS] scored at every layer",
)
