"""A Matryoshka re-ranker: backbone + prompt template + scorer, the unit the engine runs."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
from torch import nn

from matryoshka.model.backbone import Backbone
from matryoshka.model.biencoder import CosineScorer, SplitEncoderBackbone, SplitPairPrompt
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
from matryoshka.model.window import Chunking, Window, split

Scoring = Literal["heads", "query_likelihood", "cosine"]
TemplateName = Literal["relevance", "query_likelihood", "encoder_pair", "split_pair"]


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
    fingerprint: str  # backbone weights sha256, or sha256(backbone sha : artifact hash) with an artifact
    calibration_version: str
    merge_ratios: tuple[float, ...] = ()  # width ratios the model was trained to compress by
    # named plans the model's artifact defines for itself (PlanSpec), overriding the generic ones
    plans: Mapping[str, PlanSpec] = field(default_factory=dict, compare=False)
    # the one of `plans` a request that gives only a budget runs (None: the full plan)
    budget_plan: str | None = field(default=None, compare=False)


@dataclass(frozen=True)
class PlanSpec:
    """A named plan as an artifact defines it: depth (None = full), width schedule (layer -> passage
    ratio), the first layer of a confidence exit (None = no confidence exit), a top-n cascade
    (candidates that cannot reach the `cascade_top_n` best stop, from `cascade_min_layer` on) and its
    layer 0 (only the first stage's `first_stage_top_n` best documents run; None = all)."""

    depth: int | None = None
    width: tuple[tuple[int, float], ...] = ()
    exit_min_layer: int | None = None
    cascade_top_n: int | None = None
    cascade_min_layer: int | None = None
    first_stage_top_n: int | None = None

    @staticmethod
    def from_json(spec: Mapping[str, Any]) -> PlanSpec:
        """From a manifest's `plans` entry, e.g. {"width": {"2": 2.0}, "cascade_top_n": 30,
        "cascade_min_layer": 4}; fields as the dataclass's."""
        unknown = set(spec) - {"width", *INTEGER_PLAN_FIELDS}
        if unknown:
            raise ValueError(f"unknown plan fields {sorted(unknown)}")
        width = tuple(sorted((int(layer), float(ratio)) for layer, ratio in spec.get("width", {}).items()))
        numbers = {k: int(spec[k]) for k in INTEGER_PLAN_FIELDS if spec.get(k) is not None}
        if (numbers.get("cascade_top_n") is None) != (numbers.get("cascade_min_layer") is None):
            raise ValueError("cascade_top_n and cascade_min_layer go together")
        return PlanSpec(width=width, **numbers)

    def to_json(self) -> dict[str, Any]:
        """The manifest form (see `from_json`); unset fields are left out."""
        out: dict[str, Any] = {"width": {str(layer): ratio for layer, ratio in self.width}}
        out.update({k: getattr(self, k) for k in INTEGER_PLAN_FIELDS if getattr(self, k) is not None})
        return out


INTEGER_PLAN_FIELDS = ("depth", "exit_min_layer", "cascade_top_n", "cascade_min_layer", "first_stage_top_n")


def make_template(name: str, tokenizer: Any, backbone: Backbone) -> PromptTemplate:
    """The prompt template called `name` for this tokenizer and backbone family."""
    if (name in ("encoder_pair", "split_pair")) != (backbone.family == "encoder"):
        raise ValueError(f"template {name!r} does not fit a {backbone.family} backbone")
    if name == "split_pair":
        return SplitPairPrompt(tokenizer, tokenizer.cls_token_id, tokenizer.sep_token_id)
    if name == "encoder_pair":
        return EncoderPairPrompt(tokenizer, tokenizer.cls_token_id, tokenizer.sep_token_id)
    if name == "query_likelihood":
        return QueryLikelihoodPrompt(tokenizer)
    if name == "relevance":
        return RelevancePrompt(tokenizer)
    raise ValueError(
        f"unknown template {name!r}; use relevance, query_likelihood, encoder_pair or split_pair"
    )


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
        self.backbone_sha256 = fingerprint
        self.artifact_hash: str | None = None  # set when trained heads/adapters are loaded
        self.calibration_version = calibration_version
        # head layer -> weight of its calibrated score when fused with a first-stage score (engine/fusion.py);
        # shipped with the calibration; a layer not listed trusts its head alone
        self.fusion: dict[int, float] = {}
        self.fusion_fitted_on: str | None = None  # the held-out data the fusion weights were fitted on
        # A checkpoint trained with its own token compression (lightweight re-rankers) merges in
        # uniform windows at the ratios it was trained for (model/width.py).
        self.uniform_width = False
        self.merge_ratios: tuple[float, ...] = ()
        self.plans: dict[str, PlanSpec] = {}  # named plans the artifact defines (PlanSpec)
        self.budget_plan: str | None = None  # the one of `plans` budget-only requests run (None: full)
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
        template: TemplateName | None = None,
        lens_layers: Sequence[int] = (),
    ) -> MatryoshkaModel:
        """Wrap a Hugging Face model; heads and query likelihood default to scoring at every layer.

        The template defaults to the scoring's own layout (the relevance prompt for heads); heads may
        also read the query-likelihood layout, whose last query token then is the anchor.
        `lens_layers` gives query-likelihood scoring a (zero-initialised) depth lens at those layers,
        cosine scoring (encoders: the split-pair bi-encoder layout) an identity-initialised pooled lens.
        """
        if lens_layers and scoring not in ("query_likelihood", "cosine"):
            raise ValueError("a lens belongs to query-likelihood or cosine scoring")
        if scoring == "cosine":
            split = SplitEncoderBackbone(hf_model)
            scorer: Scorer = CosineScorer(split, head_layers, lens_layers)
            scorer.to(split.device)
            template_ = make_template("split_pair", tokenizer, split)
            return cls(name, split, tokenizer, template_, scorer, fingerprint)
        backbone = Backbone.wrap(hf_model)
        if backbone.family == "encoder":
            if scoring != "heads":
                raise ValueError("encoder backbones score with heads or cosine")
            template = template or "encoder_pair"
            scorer = HeadScorer(backbone, head_layers or range(1, backbone.num_layers + 1))
        elif scoring == "query_likelihood":
            if template not in (None, "query_likelihood"):
                raise ValueError("query-likelihood scoring needs the query_likelihood template")
            template = "query_likelihood"
            scorer = QueryLikelihoodScorer(backbone, head_layers, lens_layers)
        elif scoring == "heads":
            template = template or "relevance"
            yes = tokenizer("Yes", add_special_tokens=False)["input_ids"][0]
            scorer = HeadScorer(backbone, head_layers or range(1, backbone.num_layers + 1), yes)
        else:
            raise ValueError(f"unknown scoring {scoring!r}; use 'heads' or 'query_likelihood'")
        scorer.to(backbone.device)
        return cls(
            name, backbone, tokenizer, make_template(template, tokenizer, backbone), scorer, fingerprint
        )

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
    def fingerprint(self) -> str:
        """What identifies the weights: the backbone file's sha256, plus the artifact's hash if any."""
        if self.artifact_hash is None:
            return self.backbone_sha256
        return hashlib.sha256(f"{self.backbone_sha256}:{self.artifact_hash}".encode()).hexdigest()

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
            merge_ratios=self.merge_ratios,
            plans=dict(self.plans),
            budget_plan=self.budget_plan,
        )

    def encode(self, query: str, passages: list[str], truncation: Truncation) -> list[EncodedPair]:
        """Tokenise one query against its passages with the model's template."""
        return self.template.encode(query, passages, truncation)

    def encode_windows(
        self, query: str, passages: list[str], truncation: Truncation, chunking: Chunking
    ) -> tuple[list[EncodedPair], list[Window]]:
        """Tokenise one query against the windows of its passages (model/window.py): one pair per
        window, each laid out as its text would be as a passage (never cut), and the windows."""
        windows = [w for doc in split(self.tokenizer, passages, chunking) for w in doc]
        texts = [passages[w.document][w.start : w.end] for w in windows]
        whole = replace(truncation, max_passage_tokens=2**31 - 1)
        return self.template.encode(query, texts, whole), windows

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
