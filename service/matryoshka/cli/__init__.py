"""Command line: `matryoshka serve | rerank | bench | eval | train | distill | compensate-depth |
minilm-lens | minilm-width | teacher-run`, one module per group."""

from __future__ import annotations

import typer

from matryoshka.cli import bench, minilm, rerank, serve, teacher, train
from matryoshka.cli import eval as evaluation  # not to shadow the builtin

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="Matryoshka re-ranker: depth, width, early exit."
)
app.command()(rerank.rerank)
app.command()(serve.serve)
app.add_typer(bench.app, name="bench")
app.add_typer(evaluation.app, name="eval")
app.command("train")(train.train_command)
app.command("distill")(train.distill_command)
app.command("compensate-depth")(train.compensate_depth_command)
app.command("minilm-lens")(minilm.minilm_lens_command)
app.command("minilm-width")(minilm.minilm_width_command)
app.command("teacher-run")(teacher.teacher_run_command)
