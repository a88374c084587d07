"""Command line: `matryoshka rerank | bench`."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated

import typer

from matryoshka.model.loading import DEFAULT_BACKBONE

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="Matryoshka re-ranker: depth, width, early exit."
)
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks that print figures and ratios.")
app.add_typer(bench_app, name="bench")


def parse_width(specs: list[str]) -> dict[int, object]:
    """Parse LAYER:RATIO (e.g. 8:2) or LAYER:=LENGTH (e.g. 8:=128) width targets."""
    from matryoshka.model.width import WidthTarget

    width: dict[int, object] = {}
    for spec in specs:
        layer, _, value = spec.partition(":")
        try:
            if value.startswith("="):
                width[int(layer)] = WidthTarget(length=int(value[1:]))
            else:
                width[int(layer)] = WidthTarget(ratio=float(value))
        except ValueError as exc:
            raise typer.BadParameter(f"width {spec!r}: use LAYER:RATIO or LAYER:=LENGTH") from exc
    return width


@app.command()
def rerank(
    query: str,
    documents: list[str],
    model: Annotated[str, typer.Option(help="Backbone to load.")] = DEFAULT_BACKBONE,
    depth: Annotated[int | None, typer.Option(help="Last layer to run (default: all).")] = None,
    width: Annotated[list[str] | None, typer.Option(help="LAYER:RATIO or LAYER:=LENGTH, repeatable.")] = None,
    top_n: Annotated[int, typer.Option(help="Return the best N (0 = all).")] = 0,
    dtype: Annotated[str, typer.Option(help="bfloat16 or float32.")] = "bfloat16",
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole result as JSON.")] = False,
) -> None:
    """Re-rank DOCUMENTS for QUERY in process and print the ranking."""
    from matryoshka.engine.plan import Plan, PlanError
    from matryoshka.engine.reranker import Reranker

    reranker = Reranker.load(model, dtype=dtype)
    try:
        plan = Plan(depth=depth, width=parse_width(width or []))  # type: ignore[arg-type]
        result = reranker.rerank(query, documents, plan, top_n=top_n or None, return_documents=True)
    except PlanError as exc:
        for v in exc.violations:
            typer.echo(f"invalid {v.field}: {v.description}", err=True)
        raise typer.Exit(2) from exc
    if as_json:
        payload = asdict(result)
        payload["usage"]["flops_saved"] = result.usage.flops_saved
        typer.echo(json.dumps(payload, indent=2, default=str))
        return
    for rank, doc in enumerate(result.results, 1):
        typer.echo(
            f"{rank:>3}. [{doc.index}] {doc.score:.4f} layer {doc.exit_layer} ({doc.exit_reason})"
            f" {doc.document}"
        )
    typer.echo(f"FLOPs saved {result.usage.flops_saved:.1%}, compute {result.timing.compute_seconds:.2f}s")


@bench_app.command("engine")
def bench_engine(
    model: Annotated[str, typer.Option(help="Backbone to benchmark.")] = DEFAULT_BACKBONE,
    pairs: Annotated[int, typer.Option(help="Pairs per batch.")] = 32,
    tokens: Annotated[int, typer.Option(help="Tokens per pair.")] = 256,
    repeats: Annotated[int, typer.Option(help="Timed repeats (median).")] = 3,
    dtypes: Annotated[str, typer.Option(help="Comma-separated: fp32,bf16.")] = "fp32,bf16",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Plain HF forward vs the engine at full depth, then depth/width cuts, in one run."""
    from matryoshka.bench.engine import run

    figures = run(model, pairs, tokens, repeats, tuple(d.strip() for d in dtypes.split(",") if d.strip()))
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
