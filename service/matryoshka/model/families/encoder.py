"""Encoder cross-encoders with a sequence-classification head: BERT (the ms-marco-MiniLM layout,
`[CLS] q [SEP] p [SEP]`) and RoBERTa / XLM-RoBERTa (bge-reranker-base/large/v2-m3, `<s> q </s></s> p </s>`).

The checkpoint's head (BERT: pooler + classifier; RoBERTa: dense, tanh, out_proj) scores the first
token after the last layer; the same head reads it at every shallower layer (untrained there: exits
below full depth need calibration to mean much).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from matryoshka.model.backbone import OFFSET_POSITION_TYPES, Backbone
from matryoshka.model.families.base import CheckpointSource, Family, finish, load_tokenizer
from matryoshka.model.matryoshka_model import MatryoshkaModel
from matryoshka.model.prompt import EncodedPair, EncoderPairPrompt, PromptTemplate
from matryoshka.model.readout import ClassifierReadout, ReadoutScorer
from matryoshka.model.state import Segment


class RobertaPairPrompt(EncoderPairPrompt):
    """RoBERTa's pair layout: <s> query </s></s> passage </s>, token types all 0."""

    name = "roberta_pair"
    version = "roberta-pair-v1"

    def assemble(self, query_ids: list[int], passage_ids: list[int]) -> EncodedPair:
        ids = [self.cls_id, *query_ids, self.sep_id, self.sep_id, *passage_ids, self.sep_id]
        prompt, query, passage = int(Segment.PROMPT), int(Segment.QUERY), int(Segment.PASSAGE)
        segs = [prompt, *[query] * len(query_ids), prompt, prompt, *[passage] * len(passage_ids), prompt]
        return EncodedPair(input_ids=ids, segments=segs, token_types=[0] * len(ids))


def classifier_head(hf: Any) -> ClassifierReadout:
    """The checkpoint's classification head as a read-out of the first token's hidden state."""
    head = hf.classifier
    if hasattr(head, "out_proj"):  # RoBERTa family: dense, tanh, out_proj on <s>
        return ClassifierReadout(nn.Sequential(head.dense, nn.Tanh()), head.out_proj)
    pooler = hf.base_model.pooler
    return ClassifierReadout(
        nn.Sequential(pooler.dense, pooler.activation) if pooler is not None else None, head
    )


def build_cross_encoder(source: CheckpointSource) -> MatryoshkaModel:
    """Load a *ForSequenceClassification encoder checkpoint and read its head at every layer."""
    from transformers import AutoModelForSequenceClassification

    hf: Any = AutoModelForSequenceClassification.from_pretrained(
        source.directory, dtype=source.dtype, local_files_only=True, trust_remote_code=False
    )
    hf = finish(hf, source)
    tokenizer = load_tokenizer(source)
    backbone = Backbone.wrap(hf.base_model)
    head = classifier_head(hf)
    scorer = ReadoutScorer(backbone, dict.fromkeys(range(1, backbone.num_layers + 1), head))
    scorer.to(backbone.device)
    layout = RobertaPairPrompt if hf.config.model_type in OFFSET_POSITION_TYPES else EncoderPairPrompt
    template: PromptTemplate = layout(tokenizer, tokenizer.cls_token_id, tokenizer.sep_token_id)
    return MatryoshkaModel(source.name, backbone, tokenizer, template, scorer, source.fingerprint)


CROSS_ENCODER = Family(
    name="cross-encoder",
    architectures=frozenset(
        {
            "BertForSequenceClassification",
            "RobertaForSequenceClassification",
            "XLMRobertaForSequenceClassification",
        }
    ),
    build=build_cross_encoder,
    summary="BERT / (XLM-)RoBERTa + classification head (ms-marco-MiniLM, bge-reranker-v2-m3): every layer",
)
