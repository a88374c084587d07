"""`matryoshka bench`: benchmarks that print figures and ratios."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from matryoshka.cli.common import ModelOpt, backbone

app = typer.Typer(no_args_is_help=True, help="Benchmarks that print figures and ratios.")


@app.command("engine")
def bench_engine(
    model: ModelOpt = None,
    pairs: Annotated[int, typer.Option(help="Pairs per batch.")] = 32,
    tokens: Annotated[int, typer.Option(help="Tokens per pair.")] = 256,
    repeats: Annotated[int, typer.Option(help="Timed repeats (median).")] = 3,
    dtypes: Annotated[str, typer.Option(help="Comma-separated: fp32,bf16,fp16.")] = "fp32,bf16",
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N.")] = "cpu",
    model_dir: Annotated[
        str | None, typer.Option(help="Measure a re-ranker checkpoint directory instead (docs/models.md).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Plain HF forward vs the engine at full depth, then depth/width cuts, in one run."""
    from matryoshka.bench.engine import run

    figures = run(
        backbone(model),
        pairs,
        tokens,
        repeats,
        tuple(d.strip() for d in dtypes.split(",") if d.strip()),
        device=device,
        model_dir=model_dir,
    )
    if as_json:
        typer.echo(json.dumps(figures, indent=2))
        return
    for dtype in ("fp32", "bf16", "fp16"):
        if dtype not in figures:
            continue
        f = figures[dtype]
        typer.echo(
            f"{dtype}: plain {f['plain_pairs_per_s']:.2f} pairs/s,"
            f" engine full {f['engine_full_pairs_per_s']:.2f} pairs/s (ratio {f['ratio_full_vs_plain']:.3f})"
        )
        for label, c in f["configs"].items():
            typer.echo(f"  {label}: {c['pairs_per_s']:.2f} pairs/s, FLOPs saved {c['flops_saved']:.1%}")
