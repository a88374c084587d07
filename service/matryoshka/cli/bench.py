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


@app.command("load")
def bench_load(
    target: Annotated[str | None, typer.Option(help="A loopback server (default: start one here).")] = None,
    data: Annotated[Path, typer.Option(help="BEIR folder with runs/<run>.")] = Path(
        "../shared/data/trec-dl-2019"
    ),
    run_name: Annotated[
        str, typer.Option("--run", help="TREC run file under DATA/runs.")
    ] = "bm25.top100.trec",
    clients: Annotated[str, typer.Option(help="Comma-separated client counts.")] = "1,4,16",
    documents: Annotated[int, typer.Option(help="Candidates per request.")] = 20,
    budget: Annotated[float, typer.Option(help="Per-request budget (s) of the budgeted runs.")] = 2.0,
    seconds: Annotated[float, typer.Option(help="Seconds each scenario issues requests.")] = 20.0,
    scoring: Annotated[
        str | None, typer.Option(help="Scoring of the server started here (heads, query_likelihood).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Closed-loop clients at several concurrencies, with and without a budget, plus a mixed run."""
    from matryoshka.bench.load import run

    try:
        figures = run(
            target,
            data=data,
            run_name=run_name,
            clients=tuple(int(c) for c in clients.split(",") if c.strip()),
            documents=documents,
            budget=budget,
            seconds=seconds,
            server_env={"MATRYOSHKA_SCORING": scoring} if scoring else None,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    if as_json:
        typer.echo(json.dumps(figures, indent=2))
        return
    typer.echo(f"{figures['model']} ({figures['dtype']}) at {figures['target']} on {figures['data']}")
    mixed = figures["mixed"]
    rows = [("", f) for f in figures["scenarios"]] + [
        (f"{name}: ", mixed[name]) for name in ("short_alone", "short_beside_long", "long")
    ]
    for label, f in rows:
        typer.echo(
            f"  {label}{f['clients']} clients x {f['documents']} docs, depth {f['depth']},"
            f" budget {f['budget_s']}: {f['pairs_per_s']:.2f} pairs/s ({f['scored_pairs_per_s']:.2f} scored),"
            f" p50 {_s(f['p50_s'])} p90 {_s(f['p90_s'])} p99 {_s(f['p99_s'])},"
            f" within budget {f.get('within_budget')}, partial {f['partial_rate']}, errors {f['errors']}"
        )
    typer.echo(f"  short p99 beside long / alone: {mixed['short_p99_ratio']}")


def _s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.2f}s"


@app.command("cache")
def bench_cache(
    model: ModelOpt = None,
    data: Annotated[Path, typer.Option(help="BEIR collection the query and passages come from.")] = Path(
        "../shared/data/trec-dl-2019"
    ),
    pairs: Annotated[int, typer.Option(help="Passages for the one query.")] = 32,
    repeats: Annotated[int, typer.Option(help="Warm requests timed (median).")] = 5,
    dtype: Annotated[str, typer.Option(help="auto (measured), bfloat16 or float32.")] = "auto",
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
