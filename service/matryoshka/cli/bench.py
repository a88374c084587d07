"""`matryoshka bench`: benchmarks that print figures and ratios."""

from __future__ import annotations

import json
from pathlib import Path
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
    dtypes: Annotated[str, typer.Option(help="Comma-separated: fp32,bf16.")] = "fp32,bf16",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Plain HF forward vs the engine at full depth, then depth/width cuts, in one run."""
    from matryoshka.bench.engine import run

    figures = run(
        backbone(model), pairs, tokens, repeats, tuple(d.strip() for d in dtypes.split(",") if d.strip())
    )
    if as_json:
        typer.echo(json.dumps(figures, indent=2))
        return
    for dtype in ("fp32", "bf16"):
        if dtype not in figures:
            continue
        f = figures[dtype]
        typer.echo(
            f"{dtype}: plain {f['plain_pairs_per_s']:.2f} pairs/s,"
            f" engine full {f['engine_full_pairs_per_s']:.2f} pairs/s (ratio {f['ratio_full_vs_plain']:.3f})"
        )
        for label, c in f["configs"].items():
            typer.echo(f"  {label}: {c['pairs_per_s']:.2f} pairs/s, FLOPs saved {c['flops_saved']:.1%}")


@app.command("cache")
def bench_cache(
    model: ModelOpt = None,
    data: Annotated[Path, typer.Option(help="BEIR collection the query and passages come from.")] = Path(
        "../shared/data/trec-dl-2019"
    ),
    pairs: Annotated[int, typer.Option(help="Passages for the one query.")] = 32,
    repeats: Annotated[int, typer.Option(help="Warm requests timed (median).")] = 5,
    dtype: Annotated[str, typer.Option(help="bfloat16 or float32.")] = "bfloat16",
    redis_url: Annotated[
        str | None, typer.Option(help="Also measure this Redis (redis://host:port/db).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Cold, warm and resumed requests through the layer-state cache, memory and Redis stores."""
    from matryoshka.bench.cache import run
    from matryoshka.engine.reranker import Reranker

    reranker = Reranker.load(backbone(model), dtype=dtype)
    reranker.warmup()
    figures = run(reranker, data, pairs, repeats, redis_url)
    if as_json:
        typer.echo(json.dumps(figures, indent=2))
        return
    for store in ("memory", "redis"):
        if store in figures:
            f = figures[store]
            typer.echo(
                f"{store}: cold {f['cold_s']:.3f}s, warm {f['warm_s']:.4f}s (x{f['warm_speedup']:.0f}),"
                f" resume {f['resume_s']:.3f}s vs fresh full {f['fresh_full_s']:.3f}s"
                f" (ratio {f['resume_cost_ratio']:.2f}), {f['bytes_per_pair'] / 1024:.0f} KiB per pair"
            )
