"""The training recipes end to end, each writing an artifact:
- `train` (heads): groups -> self-distillation -> compensation -> calibration;
- `train_lens` (query likelihood through a depth lens): groups -> cached states -> lens self-distillation
  -> calibration.
Every stage keeps its state under one work directory, so an interrupted run started again with the
same arguments picks up where it stopped.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch

from matryoshka.data.datasets import load_collection
from matryoshka.data.sources import DataSource
from matryoshka.engine.named_plans import light_merge_layer
from matryoshka.model.artifact import Provenance, save_artifact
from matryoshka.model.compensation import CompensationConfig
from matryoshka.model.heads import QueryLikelihoodScorer
from matryoshka.model.loading import load_backbone, sha256_file
from matryoshka.model.matryoshka_model import MatryoshkaModel
from matryoshka.model.prompt import Truncation
from matryoshka.model.width import WidthTarget
from matryoshka.train.calibrate import calibrate
from matryoshka.train.compensate import compensate
from matryoshka.train.groups import (
    GroupSpec,
    TrainingGroup,
    build_groups,
    load_groups,
    save_groups,
    split_groups,
)
from matryoshka.train.lens import LensData, collect, fit_lens, layer_scores
from matryoshka.train.lora import LoraSettings
from matryoshka.train.self_distill import self_distill
from matryoshka.train.structures import FULL, Structure, backbone_autocast, head_logits, run_pass
from matryoshka.train.trainer import DistillConfig, ExternalTeacher, RunSummary

log = logging.getLogger(__name__)


@dataclass
class Recipe:
    """Everything the `train` command decides."""

    backbone: str
    sources: tuple[DataSource, ...]
    scoring: Literal["heads", "lens"] = "heads"
    lens_layers: tuple[int, ...] = (10, 15, 20, 25)  # scoring "lens": the lensed exit layers
    groups: GroupSpec = field(default_factory=GroupSpec)
    template: str = "query_likelihood"
    head_layers: tuple[int, ...] = ()  # () = every layer
    dev_fraction: float = 0.1
    distill: DistillConfig = field(default_factory=DistillConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    compensation: CompensationConfig | None = None  # None: no compensation stage
    compensation_steps: int = 0
    ratios: tuple[float, ...] = (2.0, 4.0)  # student widths (merged after a quarter of the depth)


def build_recipe(
    *,
    backbone: str,
    sources: Sequence[str],
    scoring: Literal["heads", "lens"],
    lens_layers: Sequence[int],
    negatives: int,
    num_candidates: int,
    max_queries: int | None,
    dev_fraction: float,
    epochs: int,
    groups_per_step: int,
    learning_rate: float,
    adapter_learning_rate: float,
    lora_rank: int,
    compensation_rank: int,
    compensation_steps: int,
    ratios: Sequence[float],
    self_distill: bool,
    teacher: ExternalTeacher,
    max_passage_tokens: int,
    cut_min_words: int,
    bf16: bool,
    seed: int,
) -> Recipe:
    """A recipe from the `train` command's flat options (`sources` as DIR:SPLIT); ValueError names a bad
    one."""
    widths = tuple(ratios)
    return Recipe(
        backbone=backbone,
        sources=tuple(DataSource.parse(spec) for spec in sources),
        scoring=scoring,
        lens_layers=tuple(lens_layers),
        dev_fraction=dev_fraction,
        groups=GroupSpec(
            negatives=negatives,
            num_candidates=num_candidates,
            seed=seed,
            max_queries=max_queries,
            cut_min_words=cut_min_words,
        ),
        distill=DistillConfig(
            external_teacher=teacher,
            self_distill=self_distill,
            groups_per_step=groups_per_step,
            epochs=epochs,
            learning_rate=learning_rate,
            adapter_learning_rate=adapter_learning_rate,
            seed=seed,
            bf16=bf16,
            truncation=Truncation(max_passage_tokens=max_passage_tokens),
        ),
        lora=LoraSettings(rank=lora_rank),
        compensation=CompensationConfig(rank=compensation_rank, ratios=widths) if compensation_rank else None,
        compensation_steps=compensation_steps,
        ratios=widths,
    )


def light_structures(num_layers: int, ratios: Sequence[float]) -> tuple[Structure, ...]:
    """Full width plus each ratio merged where the `light` plan merges (a quarter of the depth)."""
    merge_at = light_merge_layer(num_layers)
    return (FULL, *(Structure(((merge_at, WidthTarget(ratio=r)),)) for r in ratios))


def prepare_groups(
    recipe: Recipe, workdir: Path
) -> tuple[list[TrainingGroup], list[TrainingGroup], dict[str, str]]:
    """Build (or reload) the groups, then the seeded train/dev split; returns data file hashes too."""
    file = workdir / "groups.jsonl"
    if file.is_file():
        groups, sha = load_groups(file), sha256_file(file)
    else:
        groups = []
        for source in recipe.sources:
            groups += build_groups(load_collection(source.path), source.split, recipe.groups)
        size = recipe.groups.negatives + 1
        groups = [g for g in groups if len(g.candidates) == size]
        sha = save_groups(groups, file)
    train, dev = split_groups(groups, recipe.dev_fraction, recipe.groups.seed)
    return train, dev, {file.name: sha}


def dev_logits(
    model: MatryoshkaModel,
    groups: Sequence[TrainingGroup],
    structure: Structure,
    truncation: Truncation,
    *,
    bf16: bool = False,
) -> tuple[dict[int, torch.Tensor], torch.Tensor, torch.Tensor | None]:
    """Per head layer, the raw logits of every dev pair under `structure`; the 0/1 labels; and the
    backbone's full-depth query likelihood of each pair (decoders whose heads reach the last layer)."""
    layers = model.scorer.head_layers
    per_layer: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    labels, teacher = [], []
    structures = [FULL] if not structure.width else [FULL, structure]
    index = len(structures) - 1
    want_ql = model.backbone.family == "decoder" and max(layers) == model.backbone.num_layers
    with torch.no_grad(), backbone_autocast(model, bf16):
        for g in groups:
            pairs = model.encode(g.query, [c.text for c in g.candidates], truncation)
            out = run_pass(model, pairs, structures, layers, query_likelihood=want_ql)
            for layer in layers:
                key = (index, layer) if (index, layer) in out.pooled else (0, layer)
                per_layer[layer].append(head_logits(model, out.pooled[key], layer))
            labels.append(torch.tensor([float(c.label) for c in g.candidates]))
            if out.query_likelihood is not None:
                teacher.append(out.query_likelihood)
    ql = torch.cat(teacher) if teacher else None
    return {k: torch.cat(v) for k, v in per_layer.items()}, torch.cat(labels), ql


def group_mrr(logits: torch.Tensor, group_size: int) -> float:
    """Mean reciprocal rank of the positive (index 0 of every group)."""
    grouped = logits.view(-1, group_size)
    rank = (grouped > grouped[:, :1]).sum(dim=1) + 1
    return float((1.0 / rank.float()).mean())


def train(
    recipe: Recipe, workdir: Path, out: Path, *, command: str = "", progress: bool = True
) -> dict[str, Any]:
    """Run the recipe; writes the artifact to `out` and returns its metrics."""
    torch.manual_seed(recipe.groups.seed)
    workdir.mkdir(parents=True, exist_ok=True)
    loaded = load_backbone(recipe.backbone, torch.float32)
    model = MatryoshkaModel.from_hf(
        recipe.backbone,
        loaded.model,
        loaded.tokenizer,
        scoring="heads",
        head_layers=recipe.head_layers or None,
        fingerprint=loaded.sha256,
        template=recipe.template,  # type: ignore[arg-type]
    )
    train_groups, dev_groups, data = prepare_groups(recipe, workdir)
    log.info("%d training groups, %d dev groups", len(train_groups), len(dev_groups))
    structures = light_structures(model.backbone.num_layers, recipe.ratios)
    distill = replace(recipe.distill, structures=structures)
    stage1, lora = self_distill(
        model, train_groups, distill, workdir / "stage1", lora=recipe.lora, progress=progress
    )
    summaries: dict[str, RunSummary] = {"self_distill": stage1}
    if recipe.compensation is not None and recipe.compensation_steps > 0:
        stage2, _ = compensate(
            model,
            train_groups,
            distill,
            recipe.compensation,
            workdir / "stage2",
            progress=progress,
            max_steps=recipe.compensation_steps,
        )
        summaries["compensation"] = stage2
    size = recipe.groups.negatives + 1
    truncation = recipe.distill.truncation
    raw, labels, teacher = dev_logits(model, dev_groups, FULL, truncation, bf16=recipe.distill.bf16)
    fits = calibrate(model.scorer.calibration, raw, labels)
    model.calibration_version = f"platt-dev-{len(dev_groups)}q"
    metrics: dict[str, Any] = {
        "dev_groups": len(dev_groups),
        "train_groups": len(train_groups),
        "dev_mrr_full_width": {layer: round(group_mrr(v, size), 4) for layer, v in raw.items()},
        "dev_mrr_teacher": None if teacher is None else round(group_mrr(teacher, size), 4),
        "dev_logloss": {
            layer: [round(f.loss_before, 4), round(f.loss_after, 4)] for layer, f in fits.items()
        },
        "stages": {
            name: {
                "steps": s.steps,
                "seconds": round(s.seconds, 1),
                "first_loss": s.first_loss,
                "last_loss": s.last_loss,
            }
            for name, s in summaries.items()
        },
    }
    settings = {
        "backbone": recipe.backbone,
        "sources": [f"{s.path.name}:{s.split}" for s in recipe.sources],
        "groups": vars(recipe.groups),
        "distill": {k: v for k, v in vars(recipe.distill).items() if k not in ("structures", "truncation")},
        "structures": [s.label for s in structures],
        "lora_rank": recipe.lora.rank,
        "compensation_steps": recipe.compensation_steps,
    }
    save_artifact(model, out, lora=lora, provenance=Provenance(command, data, settings, metrics))
    return metrics


def train_lens(
    recipe: Recipe, workdir: Path, out: Path, *, command: str = "", progress: bool = True
) -> dict[str, Any]:
    """Query likelihood with a depth lens: fit the lens on cached states, calibrate, write the artifact.

    The exit layers are the lens layers plus the last (read as is); states are cached per split under
    `workdir/lens/`, so a rerun only refits the lens (minutes).
    """
    torch.manual_seed(recipe.groups.seed)
    workdir.mkdir(parents=True, exist_ok=True)
    loaded = load_backbone(recipe.backbone, torch.float32)
    last = int(loaded.model.config.num_hidden_layers)
    model = MatryoshkaModel.from_hf(
        recipe.backbone,
        loaded.model,
        loaded.tokenizer,
        scoring="query_likelihood",
        head_layers=(*recipe.lens_layers, last),
        lens_layers=recipe.lens_layers,
        fingerprint=loaded.sha256,
    )
    scorer = model.scorer
    assert isinstance(scorer, QueryLikelihoodScorer)
    train_groups, dev_groups, data = prepare_groups(recipe, workdir)
    log.info("%d training groups, %d dev groups", len(train_groups), len(dev_groups))
    cached = {}
    for split, groups in (("train", train_groups), ("dev", dev_groups)):
        file = workdir / "lens" / f"{split}.safetensors"
        if not file.is_file():
            truncation = recipe.distill.truncation
            states = collect(
                model, groups, recipe.lens_layers, truncation, bf16=recipe.distill.bf16, progress=progress
            )
            states.save(file)
        cached[split] = LensData.load(file)
    dev = cached["dev"]
    before = {
        layer: group_mrr(layer_scores(scorer, dev, layer), dev.group_size) for layer in scorer.head_layers
    }
    with backbone_autocast(model, recipe.distill.bf16):  # the LM-head products, as the states were made
        history = fit_lens(
            scorer,
            cached["train"],
            epochs=recipe.distill.epochs,
            lr=recipe.distill.learning_rate,
            seed=recipe.distill.seed,
            progress=progress,
        )
    raw = {layer: layer_scores(scorer, dev, layer) for layer in scorer.head_layers}
    fits = calibrate(scorer.calibration, raw, dev.labels.float())
    model.calibration_version = f"platt-dev-{len(dev_groups)}q"
    metrics: dict[str, Any] = {
        "dev_groups": len(dev_groups),
        "train_groups": len(train_groups),
        "train_positions": int(cached["train"].targets.shape[0]),
        "dev_mrr_logit_lens": {layer: round(v, 4) for layer, v in before.items()},
        "dev_mrr": {layer: round(group_mrr(v, dev.group_size), 4) for layer, v in raw.items()},
        "lens_kl_per_epoch": [round(v, 4) for v in history],
        "dev_logloss": {
            layer: [round(f.loss_before, 4), round(f.loss_after, 4)] for layer, f in fits.items()
        },
    }
    settings = {
        "backbone": recipe.backbone,
        "scoring": "lens",
        "sources": [f"{s.path.name}:{s.split}" for s in recipe.sources],
        "groups": vars(recipe.groups),
        "lens_layers": list(recipe.lens_layers),
        "epochs": recipe.distill.epochs,
        "learning_rate": recipe.distill.learning_rate,
        "bf16": recipe.distill.bf16,
    }
    save_artifact(model, out, provenance=Provenance(command, data, settings, metrics))
    return metrics
