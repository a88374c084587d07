"""Command line: `matryoshka serve | rerank | bench`."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated, Any

import typer

from matryoshka.model.loading import DEFAULT_BACKBONE

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="Matryoshka re-ranker: depth, width, early exit."
)
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks that print figures and ratios.")
app.add_typer(bench_app, name="bench")


def parse_width(specs: list[str]) -> dict[int, Any]:
    """Parse LAYER:RATIO (e.g. 8:2) or LAYER:=LENGTH (e.g. 8:=128) width targets."""
    from matryoshka.model.width import WidthTarget

    width: dict[int, Any] = {}
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
    target: Annotated[str | None, typer.Option(help="HOST:PORT of a server; in process without it.")] = None,
    model: Annotated[str, typer.Option(help="Backbone (in process) or served model name.")] = "",
    depth: Annotated[int | None, typer.Option(help="Last layer to run (default: all).")] = None,
    width: Annotated[list[str] | None, typer.Option(help="LAYER:RATIO or LAYER:=LENGTH, repeatable.")] = None,
    top_n: Annotated[int, typer.Option(help="Return the best N (0 = all).")] = 0,
    dtype: Annotated[str, typer.Option(help="bfloat16 or float32 (in process).")] = "bfloat16",
    timeout: Annotated[float | None, typer.Option(help="Deadline in seconds (with --target).")] = None,
    wait_ready: Annotated[
        float, typer.Option(help="With --target: wait up to this many seconds for the server to be SERVING.")
    ] = 0.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole result as JSON.")] = False,
) -> None:
    """Re-rank DOCUMENTS for QUERY, in process or through a server (--target), and print the ranking."""
    steps = parse_width(width or [])
    if target and wait_ready > 0:
        _wait_serving(target, wait_ready)
    payload = (
        _rerank_remote(target, query, documents, model, depth, steps, top_n, timeout)
        if target
        else _rerank_local(query, documents, model or DEFAULT_BACKBONE, depth, steps, top_n, dtype)
    )
    if as_json:
        typer.echo(json.dumps(payload, indent=2, default=str))
        return
    for rank, doc in enumerate(payload["results"], 1):
        typer.echo(
            f"{rank:>3}. [{doc['index']}] {doc['score']:.4f} layer {doc['exit_layer']} ({doc['exit_reason']})"
            f" {doc['document']}"
        )
    typer.echo(f"FLOPs saved {payload['usage']['flops_saved']:.1%}")


def _rerank_local(
    query: str,
    documents: list[str],
    model: str,
    depth: int | None,
    steps: dict[int, Any],
    top_n: int,
    dtype: str,
) -> dict[str, Any]:
    from matryoshka.engine.plan import Plan, PlanError
    from matryoshka.engine.reranker import Reranker

    reranker = Reranker.load(model, dtype=dtype)
    try:
        plan = Plan(depth=depth, width=steps)
        result = reranker.rerank(query, documents, plan, top_n=top_n or None, return_documents=True)
    except PlanError as exc:
        for v in exc.violations:
            typer.echo(f"INVALID_ARGUMENT {v.field}: {v.description}", err=True)
        raise typer.Exit(2) from exc
    payload = asdict(result)
    payload["usage"]["flops_saved"] = result.usage.flops_saved
    return payload


def _rerank_remote(
    target: str,
    query: str,
    documents: list[str],
    model: str,
    depth: int | None,
    steps: dict[int, Any],
    top_n: int,
    timeout: float | None,
) -> dict[str, Any]:
    from matryoshka_client import RerankClient, RerankError, WidthStep

    width = [WidthStep(layer, ratio=t.ratio, length=t.length) for layer, t in sorted(steps.items())]
    try:
        with RerankClient(target, timeout=timeout) as client:
            result = client.rerank(
                query, documents, model=model, depth=depth, width=width, top_n=top_n, return_documents=True
            )
    except RerankError as exc:
        typer.echo(f"{exc.code.name}: {exc.message}", err=True)
        for v in exc.field_violations:
            typer.echo(f"  {v.field}: {v.description}", err=True)
        raise typer.Exit(1) from exc
    return asdict(result)


def _wait_serving(target: str, seconds: float) -> None:
    """Poll the standard health service until it reports SERVING, or exit non-zero."""
    import time

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + seconds
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.25)
    typer.echo(f"UNAVAILABLE: {target} was not SERVING within {seconds:g}s", err=True)
    raise typer.Exit(1)


@app.command()
def serve(
    port: Annotated[int | None, typer.Option(help="gRPC port (0 = any free port).")] = None,
    host: Annotated[str | None, typer.Option(help="Address to bind.")] = None,
    metrics_port: Annotated[int | None, typer.Option(help="Prometheus /metrics port.")] = None,
    model: Annotated[str | None, typer.Option(help="Backbone to serve.")] = None,
    dtype: Annotated[str | None, typer.Option(help="bfloat16 or float32.")] = None,
) -> None:
    """Serve matryoshka.v1.RerankService (settings also from MATRYOSHKA_* environment variables)."""
    import asyncio
    import logging

    from matryoshka.server.app import serve as run_server
    from matryoshka.server.settings import Settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    flags = {"port": port, "host": host, "metrics_port": metrics_port, "model": model, "dtype": dtype}
    settings = Settings.model_validate({k: v for k, v in flags.items() if v is not None})
    asyncio.run(run_server(settings))


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
