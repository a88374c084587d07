"""A Matryoshka re-ranker: backbone + prompt template + scorer, the unit the engine runs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from matryoshka.model.backbone import Backbone
from matryoshka.model.heads import HeadScorer, QueryLikelihoodScorer, Scorer
from matryoshka.model.loading import LoadedBackbone
from matryoshka.model.prompt import (
    EncodedPair,
    EncoderPairPrompt,
    PromptTemplate,
    QueryLikelihoodPrompt,
    RelevancePrompt,
    Truncation,
)
from matryoshka.model.state import LayerState

Scoring = Literal["heads", "query_likelihood"]


@dataclass(frozen=True)
class ModelInfo:
    """What a caller may ask of a model: its shape, where it can exit, and what identifies it."""

    name: str
    family: str
    num_layers: int
    hidden_size: int
    head_layers: tuple[int, ...]
    scoring: str
    template_version: str
    fingerprint: str  # backbone weights sha256 (+ artifact hash once heads are trained)
    calibration_version: str


class MatryoshkaModel(nn.Module):
    """Everything model-side the engine needs, with no knowledge of requests or transport."""

    def __init__(
        self,
        name: str,
        backbone: Backbone,
        tokenizer: Any,
        template: PromptTemplate,
        scorer: Scorer,
        fingerprint: str,
        calibration_version: str = "identity",
    ) -> None:
        super().__init__()
        self.name = name
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.template = template
        self.scorer = scorer
        self.fingerprint = fingerprint
        self.calibration_version = calibration_version
        self.eval()

    @classmethod
    def from_hf(
        cls,
        name: str,
        hf_model: Any,
        tokenizer: Any,
        *,
        scoring: Scoring = "heads",
        head_layers: Sequence[int] | None = None,
        fingerprint: str = "unversioned",
    ) -> MatryoshkaModel:
        """Wrap a Hugging Face model; heads default to every layer, query likelihood to the last."""
        backbone = Backbone.wrap(hf_model)
        template: PromptTemplate
        scorer: Scorer
        if backbone.family == "encoder":
            if scoring != "heads":
                raise ValueError("encoder backbones score with heads only")
            template = EncoderPairPrompt(tokenizer, tokenizer.cls_token_id, tokenizer.sep_token_id)
            scorer = HeadScorer(backbone, head_layers or range(1, backbone.num_layers + 1))
        elif scoring == "query_likelihood":
            template = QueryLikelihoodPrompt(tokenizer)
            scorer = QueryLikelihoodScorer(backbone, head_layers)
        elif scoring == "heads":
            template = RelevancePrompt(tokenizer)
            yes = tokenizer("Yes", add_special_tokens=False)["input_ids"][0]
            scorer = HeadScorer(backbone, head_layers or range(1, backbone.num_layers + 1), yes)
        else:
            raise ValueError(f"unknown scoring {scoring!r}; use 'heads' or 'query_likelihood'")
        scorer.to(backbone.device)
        return cls(name, backbone, tokenizer, template, scorer, fingerprint)

    @classmethod
    def from_backbone(
        cls, loaded: LoadedBackbone, *, scoring: Scoring = "heads", head_layers: Sequence[int] | None = None
    ) -> MatryoshkaModel:
        """Build from an offline-loaded backbone package."""
        return cls.from_hf(
            loaded.spec.name,
            loaded.model,
            loaded.tokenizer,
            scoring=scoring,
            head_layers=head_layers,
            fingerprint=loaded.sha256,
        )

    @property
    def info(self) -> ModelInfo:
        """Static description of this model."""
        return ModelInfo(
            name=self.name,
            family=self.backbone.family,
            num_layers=self.backbone.num_layers,
            hidden_size=self.backbone.hidden_size,
            head_layers=self.scorer.head_layers,
            scoring=self.scorer.name,
            template_version=self.template.version,
            fingerprint=self.fingerprint,
            calibration_version=self.calibration_version,
        )

    def encode(self, query: str, passages: list[str], truncation: Truncation) -> list[EncodedPair]:
        """Tokenise one query against its passages with the model's template."""
        return self.template.encode(query, passages, truncation)

    def embed(self, pairs: Sequence[EncodedPair]) -> LayerState:
        """Right-pad encoded pairs into a batch and run the embeddings (layer 0)."""
        width = max(len(p.input_ids) for p in pairs)
        device = self.backbone.device
        ids = torch.zeros((len(pairs), width), dtype=torch.long)
        types = torch.zeros((len(pairs), width), dtype=torch.long)
        segments = torch.zeros((len(pairs), width), dtype=torch.int8)
        mask = torch.zeros((len(pairs), width), dtype=torch.bool)
        for i, p in enumerate(pairs):
            n = len(p.input_ids)
            ids[i, :n] = torch.tensor(p.input_ids)
            types[i, :n] = torch.tensor(p.token_types)
            segments[i, :n] = torch.tensor(p.segments, dtype=torch.int8)
            mask[i, :n] = True
        return self.backbone.embed(ids.to(device), mask.to(device), segments.to(device), types.to(device))
