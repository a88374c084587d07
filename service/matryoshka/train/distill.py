"""The `distill` recipe (Rank-DistiLLM): a teacher's TREC run -> hard + deep groups -> listwise KL
into the student's heads (optionally with a LoRA) -> an artifact with its provenance.

The student is calibrated with the identity (calibration is a separate step); the held-out queries
measure how well the student agrees with the teacher before and after training.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from matryoshka.data.datasets import DataError, load_collection, read_run
from matryoshka.data.sources import DataSource
from matryoshka.model import loading
from matryoshka.model.artifact import Provenance, save_artifact
from matryoshka.model.matryoshka_model import MatryoshkaModel
from matryoshka.model.prompt import Truncation
from matryoshka.train.groups import TrainingGroup, save_groups, split_groups
from matryoshka.train.listwise import distill_listwise, lora_settings, teacher_agreement, teacher_groups


@dataclass(frozen=True)
class DistillRecipe:
    """Everything the `distill` command decides."""

    source: DataSource
    teacher_run: Path
    student: str = "minilm-l6"
    hard: int = 8  # the teacher's top documents per group
    deep: int = 8  # documents per group sampled from teacher ranks hard+1..max_rank
    max_rank: int = 100
    depth_layer: int | None = None  # train (and keep) only the head at this layer
    max_queries: int | None = None
    dev_fraction: float = 0.1
    epochs: int = 4
    groups_per_step: int = 8
    learning_rate: float = 1e-3
    adapter_learning_rate: float = 1e-4
    lora_rank: int = 8
    temperature: float = 1.0
    max_passage_tokens: int = 192
    seed: int = 13


def distill(
    recipe: DistillRecipe, workdir: Path, out: Path, *, command: str = "", progress: bool = True
) -> dict[str, Any]:
    """Run the recipe; writes the artifact to `out` and returns its metrics. Raises DataError for
    unusable data and ValueError for settings that cannot work (an unknown student, say)."""
    groups, name = _groups(recipe)
    train_groups, dev_groups = split_groups(groups, recipe.dev_fraction, recipe.seed)
    if not train_groups:
        raise DataError(f"all {len(groups)} groups were held out; lower the dev fraction")
    hashes = {
        "groups.jsonl": save_groups(groups, workdir / "groups.jsonl"),
        recipe.teacher_run.name: loading.sha256_file(recipe.teacher_run),
    }
    loaded = loading.load_backbone(recipe.student, torch.float32)
    model = MatryoshkaModel.from_hf(
        recipe.student,
        loaded.model,
        loaded.tokenizer,
        scoring="heads",
        head_layers=None if recipe.depth_layer is None else [recipe.depth_layer],
        fingerprint=loaded.sha256,
    )
    truncation = Truncation(max_passage_tokens=recipe.max_passage_tokens)
    before = teacher_agreement(model, dev_groups, truncation=truncation)
    summary, adapter = distill_listwise(
        model,
        train_groups,
        workdir / "student",
        epochs=recipe.epochs,
        groups_per_step=recipe.groups_per_step,
        learning_rate=recipe.learning_rate,
        adapter_learning_rate=recipe.adapter_learning_rate,
        temperature=recipe.temperature,
        lora=lora_settings(model, recipe.lora_rank),
        depth_layer=recipe.depth_layer,
        seed=recipe.seed,
        truncation=truncation,
        progress=progress,
    )
    after = teacher_agreement(model, dev_groups, truncation=truncation)
    model.calibration_version = "identity"  # calibration is a separate step
    metrics: dict[str, Any] = {
        "train_groups": len(train_groups),
        "dev_groups": len(dev_groups),
        "steps": summary.steps,
        "seconds": round(summary.seconds, 1),
        "first_loss": summary.first_loss,
        "last_loss": summary.last_loss,
        "dev_agreement": {
            layer: {"before": asdict(before[layer]), "after": asdict(a)} for layer, a in after.items()
        },
    }
    r = recipe
    settings = {
        "student": r.student,
        "data": name,
        "teacher_run": r.teacher_run.name,
        "sampling": {
            "hard": r.hard,
            "deep": r.deep,
            "max_rank": r.max_rank,
            "max_queries": r.max_queries,
            "seed": r.seed,
        },
        "depth_layer": r.depth_layer,
        "dev_fraction": r.dev_fraction,
        "epochs": r.epochs,
        "groups_per_step": r.groups_per_step,
        "learning_rate": r.learning_rate,
        "adapter_learning_rate": r.adapter_learning_rate,
        "lora_rank": r.lora_rank,
        "temperature": r.temperature,
        "max_passage_tokens": r.max_passage_tokens,
    }
    save_artifact(model, out, lora=adapter, provenance=Provenance(command, hashes, settings, metrics))
    return metrics


def _groups(recipe: DistillRecipe) -> tuple[list[TrainingGroup], str]:
    """The teacher groups and "collection:split"; DataError when no query yields a group."""
    collection = load_collection(recipe.source.path)
    run = read_run(recipe.teacher_run, collection)
    groups = teacher_groups(
        collection,
        recipe.source.split,
        run,
        max_rank=recipe.max_rank,
        hard=recipe.hard,
        deep=recipe.deep,
        seed=recipe.seed,
        max_queries=recipe.max_queries,
    )
    name = f"{collection.name}:{recipe.source.split}"
    if not groups:
        raise DataError(
            f"no query of {name} has {recipe.hard + recipe.deep} documents within the top "
            f"{recipe.max_rank} of {recipe.teacher_run}"
        )
    return groups, name
