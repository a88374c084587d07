"""`matryoshka train` (heads or a depth lens), `matryoshka distill` (Rank-DistiLLM) and `matryoshka
compensate-depth` (V-LoRA by segment-wise self-distillation): options in, the recipes in train/ do the work
and write an artifact."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from matryoshka.cli.common import ModelOpt, ProgressOpt, backbone, command_line, fail


def train_command(
    data: Annotated[
        list[str],
        typer.Option(help="DIR:SPLIT of a BEIR-format collection to draw groups from (repeatable)."),
    ],
    out: Annotated[Path, typer.Option(help="Artifact directory to write.")],
    workdir: Annotated[
        Path | None, typer.Option(help="Checkpoints, cached passes and groups (default: out/train/<name>).")
    ] = None,
    model: ModelOpt = None,
    scoring: Annotated[
        str,
        typer.Option(help="heads (per-layer heads) or lens (query likelihood through a depth lens)."),
    ] = "heads",
    lens_layers: Annotated[
        str, typer.Option(help="Comma list of the lensed exit layers (--scoring lens).")
    ] = "10,15,20,25",
    negatives: Annotated[int, typer.Option(min=1, help="BM25 hard negatives per group.")] = 7,
    candidates: Annotated[
        int, typer.Option(min=1, help="BM25 candidates per query that negatives are drawn from.")
    ] = 100,
    max_queries: Annotated[int | None, typer.Option(min=1, help="Groups per data source (first N).")] = None,
    dev_fraction: Annotated[
        float, typer.Option(min=0.01, max=0.5, help="Share of the queries held out for calibration.")
    ] = 0.1,
    epochs: Annotated[int, typer.Option(min=1, help="Self-distillation (or lens) epochs.")] = 4,
    groups_per_step: Annotated[int, typer.Option(min=1, help="Groups per optimiser step.")] = 8,
    learning_rate: Annotated[float, typer.Option(help="Heads' learning rate.")] = 1e-3,
    adapter_learning_rate: Annotated[float, typer.Option(help="LoRA / compensation learning rate.")] = 1e-4,
    lora_rank: Annotated[
        int, typer.Option(min=0, help="Stage-1 LoRA rank (0: heads only, frozen backbone).")
    ] = 0,
    compensation_rank: Annotated[int, typer.Option(min=0, help="V/H-LoRA rank (0: no compensation).")] = 0,
    compensation_steps: Annotated[int, typer.Option(min=0, help="Compensation optimiser steps.")] = 0,
    ratios: Annotated[
        str, typer.Option(help="Comma list of width ratios students and H-LoRA train on.")
    ] = "2,4",
    self_distill: Annotated[bool, typer.Option(help="Cascaded self-distillation (off: labels only).")] = True,
    teacher: Annotated[
        str, typer.Option(help="External teacher: query_likelihood (the backbone's own, full depth) or none.")
    ] = "query_likelihood",
    max_passage_tokens: Annotated[int, typer.Option(min=8, help="Passage tokens kept.")] = 192,
    cut_min_words: Annotated[
        int, typer.Option(min=0, help="Cut each passage to a random length >= this many words (0: off).")
    ] = 0,
    bf16: Annotated[bool, typer.Option(help="bf16 autocast for the backbone pass.")] = True,
    seed: Annotated[int, typer.Option(help="Seed for groups, order and initialisation.")] = 13,
    progress: ProgressOpt = True,
) -> None:
    """Train heads (+ LoRA), compensation and calibration, or a depth lens; write an artifact (resumable)."""
    from matryoshka.train.recipe import build_recipe, train, train_lens

    if teacher not in ("query_likelihood", "none"):
        raise typer.BadParameter("use query_likelihood or none", param_hint="--teacher")
    if scoring not in ("heads", "lens"):
        raise typer.BadParameter("use heads or lens", param_hint="--scoring")
    try:
        recipe = build_recipe(
            backbone=backbone(model),
            sources=data,
            scoring=scoring,  # type: ignore[arg-type]
            lens_layers=[int(layer) for layer in lens_layers.split(",") if layer.strip()],
            negatives=negatives,
            num_candidates=candidates,
            max_queries=max_queries,
            dev_fraction=dev_fraction,
            epochs=epochs,
            groups_per_step=groups_per_step,
            learning_rate=learning_rate,
            adapter_learning_rate=adapter_learning_rate,
            lora_rank=lora_rank,
            compensation_rank=compensation_rank,
            compensation_steps=compensation_steps,
            ratios=[float(r) for r in ratios.split(",") if r.strip()],
            self_distill=self_distill,
            teacher=teacher,  # type: ignore[arg-type]
            max_passage_tokens=max_passage_tokens,
            cut_min_words=cut_min_words,
            bf16=bf16,
            seed=seed,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    run = train_lens if scoring == "lens" else train
    metrics = run(
        recipe, workdir or Path("out") / "train" / out.name, out, command=command_line(), progress=progress
    )
    typer.echo(json.dumps(metrics, indent=2))
    typer.echo(f"artifact written to {out}")


def distill_command(
    data: Annotated[
        str, typer.Option(help="DIR:SPLIT of a BEIR-format collection; the split's queries are distilled on.")
    ],
    teacher_run: Annotated[Path, typer.Option(help="The teacher's TREC run; its scores are the targets.")],
    out: Annotated[Path, typer.Option(help="Artifact directory to write.")],
    workdir: Annotated[
        Path | None, typer.Option(help="Checkpoints, cached passes and groups (default: out/distill/<name>).")
    ] = None,
    student: Annotated[str, typer.Option(help="Student backbone.")] = "minilm-l6",
    hard: Annotated[int, typer.Option(min=1, help="The teacher's top documents per group.")] = 8,
    deep: Annotated[
        int, typer.Option(min=0, help="Documents per group sampled from teacher ranks hard+1..max-rank.")
    ] = 8,
    max_rank: Annotated[int, typer.Option(min=2, help="Deepest teacher rank sampled.")] = 100,
    depth_layer: Annotated[
        int | None,
        typer.Option(min=1, help="Train (and keep) only the head at this layer: a shallow student."),
    ] = None,
    max_queries: Annotated[
        int | None, typer.Option(min=1, help="At most N groups (queries.jsonl order).")
    ] = None,
    dev_fraction: Annotated[
        float, typer.Option(min=0.0, max=0.5, help="Queries held out to measure agreement with the teacher.")
    ] = 0.1,
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs.")] = 4,
    groups_per_step: Annotated[int, typer.Option(min=1, help="Groups per optimiser step.")] = 8,
    learning_rate: Annotated[float, typer.Option(help="Heads' learning rate.")] = 1e-3,
    adapter_learning_rate: Annotated[float, typer.Option(help="LoRA learning rate.")] = 1e-4,
    lora_rank: Annotated[int, typer.Option(min=0, help="LoRA rank (0: heads only, frozen backbone).")] = 8,
    temperature: Annotated[
        float, typer.Option(min=1e-3, help="Softmax temperature of the listwise KL.")
    ] = 1.0,
    max_passage_tokens: Annotated[int, typer.Option(min=8, help="Passage tokens kept.")] = 192,
    seed: Annotated[int, typer.Option(help="Seed for sampling, split, order and initialisation.")] = 13,
    progress: ProgressOpt = True,
) -> None:
    """Rank-DistiLLM: distil a teacher's ranking (hard + deep sampling, listwise KL) into an artifact."""
    from matryoshka.data.datasets import DataError
    from matryoshka.data.sources import DataSource
    from matryoshka.train.distill import DistillRecipe, distill

    try:
        recipe = DistillRecipe(
            source=DataSource.parse(data),
            teacher_run=teacher_run,
            student=student,
            hard=hard,
            deep=deep,
            max_rank=max_rank,
            depth_layer=depth_layer,
            max_queries=max_queries,
            dev_fraction=dev_fraction,
            epochs=epochs,
            groups_per_step=groups_per_step,
            learning_rate=learning_rate,
            adapter_learning_rate=adapter_learning_rate,
            lora_rank=lora_rank,
            temperature=temperature,
            max_passage_tokens=max_passage_tokens,
            seed=seed,
        )
        work = workdir or Path("out") / "distill" / out.name
        metrics = distill(recipe, work, out, command=command_line(), progress=progress)
    except DataError as exc:
        fail(f"error: {exc}", 2, exc)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    typer.echo(json.dumps(metrics, indent=2))
    typer.echo(f"artifact written to {out}")


def compensate_depth_command(
    data: Annotated[
        list[str],
        typer.Option(help="DIR:SPLIT of a BEIR-format collection to draw groups from (repeatable)."),
    ],
    out: Annotated[Path, typer.Option(help="Artifact directory to write.")],
    model: ModelOpt = None,
    artifact: Annotated[
        Path | None,
        typer.Option(help="Query-likelihood artifact to start from (default: the model's shipped one)."),
    ] = None,
    workdir: Annotated[
        Path, typer.Option(help="Groups, cached segment states and checkpoints (resumable).")
    ] = Path("out/depth-compensation"),
    segment_from: Annotated[
        int,
        typer.Option(
            min=1, help="Layer K: frozen up to here; V-LoRA on K+1..last, every exit above K trained."
        ),
    ] = 15,
    exits: Annotated[
        str,
        typer.Option(
            help="Comma list of the exits trained (V-LoRA up to the deepest); default: all above K."
        ),
    ] = "",
    negatives: Annotated[int, typer.Option(min=1, help="BM25 hard negatives per group.")] = 7,
    max_queries: Annotated[int | None, typer.Option(min=1, help="Groups per data source (first N).")] = None,
    dev_fraction: Annotated[
        float, typer.Option(min=0.01, max=0.5, help="Share of the queries held out for calibration.")
    ] = 0.1,
    epochs: Annotated[int, typer.Option(min=1, help="Passes over the training groups.")] = 2,
    lr: Annotated[float, typer.Option(min=0.0, help="AdamW learning rate of the V-LoRA.")] = 1e-3,
    lens_lr: Annotated[float, typer.Option(min=0.0, help="AdamW learning rate of the exits' lens.")] = 1e-3,
    rank: Annotated[int, typer.Option(min=1, help="V-LoRA rank.")] = 8,
    dtype: Annotated[
        str, typer.Option(help="Backbone compute while training: auto (measured), bfloat16 or float32.")
    ] = "auto",
    seed: Annotated[int, typer.Option(help="Seed for groups, split, order and initialisation.")] = 13,
) -> None:
    """V-LoRA by segment-wise self-distillation: shallow exits read what full depth reads
    (train/depth_compensation.py)."""
    import time

    from matryoshka.data.datasets import DataError
    from matryoshka.engine.dtype import choose_dtype
    from matryoshka.model.artifact import shipped_artifact
    from matryoshka.train.depth_compensation import DepthDistillConfig, compensate_depth_artifact
    from matryoshka.train.groups import GroupSpec

    started = time.perf_counter()

    def log(message: str) -> None:
        typer.echo(f"[{time.perf_counter() - started:7.0f}s] {message}", err=True)

    name = backbone(model)
    start = artifact or shipped_artifact(name)
    if start is None:
        fail(f"{name} ships no artifact; give --artifact (a query-likelihood artifact with a depth lens)")
    try:
        chosen = choose_dtype(dtype)
        log(f"training in {chosen.name} ({chosen.reason})")
        config = DepthDistillConfig(
            segment_from=segment_from,
            exits=_layers(exits, "--exits"),
            epochs=epochs,
            lr=lr,
            lens_lr=lens_lr,
            rank=rank,
            seed=seed,
            bf16=chosen.name == "bfloat16",
        )
        groups = GroupSpec(negatives=negatives, max_queries=max_queries, seed=seed)
        settings = {
            "data": data,
            "config": vars(config),
            "groups": vars(groups),
            "dev_fraction": dev_fraction,
        }
        metrics = compensate_depth_artifact(
            start,
            out,
            data,
            config,
            groups,
            workdir,
            dev_fraction=dev_fraction,
            log=log,
            command=command_line(),
            settings=settings,
        )
    except (DataError, ValueError) as exc:  # unusable data or artifact (ArtifactError is a ValueError)
        fail(str(exc), cause=exc)
    typer.echo(json.dumps(metrics, indent=2))
    typer.echo(f"wrote {out} ({time.perf_counter() - started:.0f} s)")


def _layers(spec: str, option: str) -> tuple[int, ...]:
    """'20,22' -> (20, 22); anything but comma-separated integers is a usage error naming `option`."""
    try:
        return tuple(int(layer) for layer in spec.split(",") if layer.strip())
    except ValueError as exc:
        raise typer.BadParameter(f"{spec!r}: want comma-separated layer numbers", param_hint=option) from exc
