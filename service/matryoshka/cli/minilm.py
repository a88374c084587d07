"""`matryoshka minilm-lens`: the split-pair MiniLM artifact (pooled lens + per-layer calibration).

Fits the pooled lens (train/pooled_lens.py) on the sentences of the `--fit` collections, calibrates
every layer on labelled BM25 candidates of `--calibrate`, prints nDCG@10 per layer (raw cosine and
through the lens) on `--select`, and writes the artifact. Pooled states are cached in `--workdir`,
so a rerun (or a run killed part-way) recomputes nothing it already has.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from matryoshka.cli.common import command_line, fail, parse_width

if TYPE_CHECKING:
    from matryoshka.engine.plan import WidthTarget

FitOpt = Annotated[
    list[Path], typer.Option("--fit", help="Collection whose corpus and queries fit the lens.")
]


def minilm_lens_command(
    fit: FitOpt,
    calibrate: Annotated[str, typer.Option(help="DIR:SPLIT whose BM25 candidates calibrate every layer.")],
    select: Annotated[str, typer.Option(help="DIR:SPLIT: per-layer nDCG@10 table (model selection).")],
    out: Annotated[Path, typer.Option(help="Artifact directory to write.")],
    workdir: Annotated[Path, typer.Option(help="Cache of pooled states (resumable).")] = Path("out/minilm"),
    lens_layers: Annotated[str, typer.Option(help="Layers given a pooled lens.")] = "2,3,4,5",
    max_texts: Annotated[int, typer.Option(min=1, help="Fit texts per collection.")] = 2000,
    max_queries: Annotated[int, typer.Option(min=1, help="Queries of --calibrate and --select.")] = 100,
    calibration_depth: Annotated[int, typer.Option(min=2, help="BM25 candidates per query.")] = 20,
    ridge: Annotated[float, typer.Option(min=0.0, help="Ridge of the lens fit.")] = 1e-2,
    max_tokens: Annotated[int, typer.Option(min=8, help="Text tokens per side.")] = 192,
) -> None:
    """Fit, calibrate and select the split-pair MiniLM; write its artifact."""
    from matryoshka.data.datasets import DataError
    from matryoshka.eval.layer_selection import selection_table
    from matryoshka.train.minilm_lens import fit_split_pair, save_split_pair

    started = time.perf_counter()

    def log(message: str) -> None:
        typer.echo(f"[{time.perf_counter() - started:7.0f}s] {message}", err=True)

    try:
        result = fit_split_pair(
            fit,
            calibrate,
            select,
            workdir,
            lens_layers=[int(x) for x in lens_layers.split(",") if x],
            max_texts=max_texts,
            max_queries=max_queries,
            calibration_depth=calibration_depth,
            ridge=ridge,
            max_tokens=max_tokens,
            log=log,
        )
    except (DataError, ValueError) as exc:  # unusable data, or calibration labels of one class
        fail(str(exc), cause=exc)
    table = selection_table(
        result.pairs,
        result.run,
        result.qrels,
        raw=result.raw,
        lensed=result.lensed,
        probabilities=result.probabilities,
        num_layers=result.model.backbone.num_layers,
    )
    table["calibration"] = {
        layer: [f.temperature, f.bias, f.loss_after] for layer, f in result.calibration.items()
    }
    table["seconds"] = round(time.perf_counter() - started, 1)
    typer.echo(json.dumps({"select": select, "max_queries": max_queries, **table}, indent=1))
    settings = {"fit": [str(p) for p in fit], "max_texts": max_texts, "ridge": ridge, "calibrate": calibrate}
    save_split_pair(result, out, command=command_line(), settings=settings, metrics={"select": table})


def minilm_width_command(
    artifact: Annotated[Path, typer.Option(help="Split-pair artifact to add width compensation to.")],
    out: Annotated[Path, typer.Option(help="Artifact directory to write.")],
    data: Annotated[
        list[str], typer.Option("--data", help="DIR:SPLIT whose queries and BM25 candidates are the rows.")
    ],
    structures: Annotated[
        str,
        typer.Option(
            help="Width schedules trained in turn: ';' between them, LAYER:RATIO steps, e.g. '1:2;1:2,3:2'."
        ),
    ] = "1:2;1:2,3:2;2:2;2:2,4:2",
    steps: Annotated[int, typer.Option(min=1, help="Optimiser steps.")] = 600,
    depth: Annotated[int, typer.Option(min=2, help="BM25 candidates per query.")] = 30,
    candidates: Annotated[int, typer.Option(min=2, help="Candidates of each query in a step's batch.")] = 8,
    queries: Annotated[int, typer.Option(min=1, help="Queries in a step's batch.")] = 4,
    lr: Annotated[float, typer.Option(min=0.0, help="AdamW learning rate of the adapters.")] = 1e-3,
    max_queries: Annotated[int | None, typer.Option(min=1, help="Queries per --data source.")] = None,
    workdir: Annotated[Path, typer.Option(help="Teacher embeddings and checkpoints (resumable).")] = Path(
        "out/minilm-width"
    ),
    dtype: Annotated[
        str, typer.Option(help="Backbone dtype while training: auto (measured), bfloat16 or float32.")
    ] = "auto",
    plan: Annotated[
        list[str] | None,
        typer.Option(
            help="Named plan the artifact defines: NAME=LAYER:RATIO,...[,OPTION=N] with options depth, "
            "exit-from, cascade-top, cascade-from, e.g. 'adaptive=2:2,4:2,cascade-top=30,cascade-from=4'; "
            "repeatable."
        ),
    ] = None,
) -> None:
    """Train H-LoRA so merged widths score as the full width (train/width_compensation.py)."""
    from matryoshka.data.datasets import DataError
    from matryoshka.engine.dtype import DTYPES, choose_dtype
    from matryoshka.train.width_compensation import WidthDistillConfig, compensate_artifact

    started = time.perf_counter()

    def log(message: str) -> None:
        typer.echo(f"[{time.perf_counter() - started:7.0f}s] {message}", err=True)

    settings = {
        "data": data,
        "structures": structures,
        "steps": steps,
        "depth": depth,
        "dtype": dtype,
        "batch": [queries, candidates],
        "lr": lr,
    }
    try:
        plans = dict(parse_plan(p) for p in plan or [])
        chosen = choose_dtype(dtype)
        log(f"training in {chosen.name} ({chosen.reason})")
        config = WidthDistillConfig(
            structures=parse_structures(structures),
            steps=steps,
            candidates_per_query=candidates,
            queries_per_batch=queries,
            lr=lr,
        )
        compensate_artifact(
            artifact,
            out,
            data,
            config,
            workdir,
            depth=depth,
            max_queries=max_queries,
            dtype=DTYPES[chosen.name],
            plans=plans,
            log=log,
            command=command_line(),
            settings=settings,
        )
    except (DataError, ValueError) as exc:  # unusable data or artifact (ArtifactError is a ValueError)
        fail(str(exc), cause=exc)
    typer.echo(f"wrote {out} ({time.perf_counter() - started:.0f} s)")


PLAN_OPTIONS = {
    "depth": "depth",
    "exit-from": "exit_min_layer",
    "cascade-top": "cascade_top_n",
    "cascade-from": "cascade_min_layer",
}


def parse_structures(spec: str) -> tuple[dict[int, WidthTarget], ...]:
    """'1:2;1:2,3:2' -> ({1: /2}, {1: /2, 3: /2}): width schedules as `--width` takes them, ';' between."""
    schedules = tuple(parse_width(part.split(",")) for part in spec.split(";") if part.strip())
    if not schedules:
        raise typer.BadParameter(f"no width schedule in {spec!r}", param_hint="--structures")
    return schedules


def parse_plan(spec: str) -> tuple[str, dict[str, Any]]:
    """'adaptive=2:2,4:2,cascade-top=30,cascade-from=4' -> ("adaptive", its manifest form): width steps
    LAYER:RATIO and the options depth, exit-from, cascade-top, cascade-from (=N), commas between."""
    name, sep, rest = spec.partition("=")
    if not sep or not name.strip():
        raise typer.BadParameter(
            f"plan {spec!r}: want NAME=LAYER:RATIO,...[,OPTION=N] (options {', '.join(PLAN_OPTIONS)})"
        )
    items = [item.strip() for item in rest.split(",") if item.strip()]
    width = parse_width([item for item in items if "=" not in item])  # LAYER:=LENGTH holds "=": an option
    fields: dict[str, Any] = {"width": {layer: target.ratio for layer, target in width.items()}}
    for option in (item for item in items if "=" in item):
        key, _, value = option.partition("=")
        if key not in PLAN_OPTIONS or not value.isdigit():
            raise typer.BadParameter(
                f"plan {spec!r}: unknown option {option!r} (options {', '.join(PLAN_OPTIONS)})"
            )
        fields[PLAN_OPTIONS[key]] = int(value)
    return name.strip(), fields
