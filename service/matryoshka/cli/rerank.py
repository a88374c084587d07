"""`matryoshka rerank`: one query in process or through a server, the ranking printed."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import TYPE_CHECKING, Annotated, Any, Literal, NamedTuple

import typer

from matryoshka.cli.common import backbone, fail, parse_width

if TYPE_CHECKING:
    from matryoshka.engine.plan import WidthTarget

Aggregate = Literal["max", "first", "mean"]


def rerank(
    query: str,
    documents: list[str],
    target: Annotated[str | None, typer.Option(help="HOST:PORT of a server; in process without it.")] = None,
    model: Annotated[str, typer.Option(help="Backbone (in process) or served model name.")] = "",
    depth: Annotated[int | None, typer.Option(help="Last layer to run (default: all).")] = None,
    width: Annotated[list[str] | None, typer.Option(help="LAYER:RATIO or LAYER:=LENGTH, repeatable.")] = None,
    top_n: Annotated[int, typer.Option(help="Return the best N (0 = all).")] = 0,
    dtype: Annotated[str, typer.Option(help="auto (measured), bfloat16 or float32 (in process).")] = "auto",
    timeout: Annotated[float | None, typer.Option(help="Deadline in seconds (with --target).")] = None,
    wait_ready: Annotated[
        float, typer.Option(help="With --target: wait up to this many seconds for the server to be SERVING.")
    ] = 0.0,
    artifact: Annotated[str | None, typer.Option(help="In process: trained artifact dir.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole result as JSON.")] = False,
    chunk_tokens: Annotated[
        int, typer.Option(help="Split documents into windows of this many tokens (0 = truncate instead).")
    ] = 0,
    chunk_overlap: Annotated[int, typer.Option(help="Tokens a window shares with the one before.")] = 0,
    aggregate: Annotated[
        Aggregate, typer.Option(help="A chunked document's score: its best window, its first, or the mean.")
    ] = "max",
    min_score: Annotated[
        float | None, typer.Option(help="Drop results below this calibrated probability (0..1).")
    ] = None,
) -> None:
    """Re-rank DOCUMENTS for QUERY, in process or through a server (--target), and print the ranking."""
    steps = parse_width(width or [])
    if target and wait_ready > 0:
        _wait_serving(target, wait_ready)
    options = Options(depth, steps, top_n, (chunk_tokens, chunk_overlap, aggregate), min_score)
    payload = (
        _rerank_remote(target, query, documents, model, options, timeout)
        if target
        else _rerank_local(query, documents, backbone(model), options, dtype, artifact)
    )
    if as_json:
        typer.echo(json.dumps(payload, indent=2, default=str))
        return
    for rank, doc in enumerate(payload["results"], 1):
        typer.echo(
            f"{rank:>3}. [{doc['index']}] {doc['score']:.4f} layer {doc['exit_layer']} ({doc['exit_reason']})"
            f"{_window(doc.get('window'))} {doc['document']}"
        )
    typer.echo(f"FLOPs saved {payload['usage']['flops_saved']:.1%}")


class Options(NamedTuple):
    """What the request asks besides query and documents."""

    depth: int | None
    steps: dict[int, WidthTarget]
    top_n: int
    chunking: tuple[int, int, Aggregate]  # window tokens (0 = no chunking), overlap, aggregate
    min_score: float | None


def _window(window: dict[str, int] | None) -> str:
    if not window:
        return ""
    return f" window {window['index'] + 1}/{window['count']} [{window['start']}:{window['end']})"


def _rerank_local(
    query: str, documents: list[str], model: str, o: Options, dtype: str, artifact: str | None
) -> dict[str, Any]:
    from matryoshka.engine.plan import Plan, PlanError
    from matryoshka.engine.reranker import Chunking, Reranker

    tokens, overlap, aggregate = o.chunking
    try:
        chunking = Chunking(tokens, overlap, aggregate) if tokens else None
    except ValueError as exc:
        fail(f"INVALID_ARGUMENT chunking: {exc}", 2, exc)
    if o.min_score is not None and not 0.0 <= o.min_score <= 1.0:
        fail(f"INVALID_ARGUMENT min_score: must be within [0, 1], got {o.min_score}", 2)
    reranker = Reranker.load(model, dtype=dtype, artifact=artifact)
    try:
        plan = Plan(depth=o.depth, width=o.steps)
        result = reranker.rerank(
            query,
            documents,
            plan,
            top_n=o.top_n or None,
            return_documents=True,
            chunking=chunking,
            min_score=o.min_score,
        )
    except PlanError as exc:
        fail("\n".join(f"INVALID_ARGUMENT {v.field}: {v.description}" for v in exc.violations), 2, exc)
    payload = asdict(result)
    payload["usage"]["flops_saved"] = result.usage.flops_saved
    return payload


def _rerank_remote(
    target: str, query: str, documents: list[str], model: str, o: Options, timeout: float | None
) -> dict[str, Any]:
    """The same request through the Python client, on a plain channel."""
    from matryoshka_client import Chunking, RerankClient, RerankError, WidthStep

    width = [WidthStep(layer, ratio=t.ratio, length=t.length) for layer, t in sorted(o.steps.items())]
    tokens, overlap, aggregate = o.chunking
    try:
        with RerankClient(target, timeout=timeout) as client:
            result = client.rerank(
                query,
                documents,
                model=model,
                depth=o.depth,
                width=width,
                top_n=o.top_n,
                return_documents=True,
                chunking=Chunking(tokens, overlap, aggregate) if tokens else None,
                min_score=o.min_score,
            )
    except RerankError as exc:
        lines = [
            f"{exc.code.name}: {exc.message}",
            *(f"  {v.field}: {v.description}" for v in exc.field_violations),
        ]
        fail("\n".join(lines), 1, exc)
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
    fail(f"UNAVAILABLE: {target} was not SERVING within {seconds:g}s", 1)
