"""Command line: `matryoshka serve | rerank | bench | eval | train | distill`."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from matryoshka.model.loading import DEFAULT_BACKBONE

if TYPE_CHECKING:
    from matryoshka.engine.reranker import Reranker
    from matryoshka.eval.rerank_run import EvalInput
    from matryoshka.train.data import TrainingGroup

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="Matryoshka re-ranker: depth, width, early exit."
)
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks that print figures and ratios.")
app.add_typer(bench_app, name="bench")
eval_app = typer.Typer(
    no_args_is_help=True,
    help="Evaluate on a BEIR-format collection: `eval --data DIR` compares plans, `eval sweep` draws curves.",
)
app.add_typer(eval_app, name="eval")


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
    artifact: Annotated[str | None, typer.Option(help="In process: trained artifact dir.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole result as JSON.")] = False,
) -> None:
    """Re-rank DOCUMENTS for QUERY, in process or through a server (--target), and print the ranking."""
    steps = parse_width(width or [])
    if target and wait_ready > 0:
        _wait_serving(target, wait_ready)
    payload = (
        _rerank_remote(target, query, documents, model, depth, steps, top_n, timeout)
        if target
        else _rerank_local(query, documents, model or DEFAULT_BACKBONE, depth, steps, top_n, dtype, artifact)
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
    artifact: str | None,
) -> dict[str, Any]:
    from matryoshka.engine.plan import Plan, PlanError
    from matryoshka.engine.reranker import Reranker

    reranker = Reranker.load(model, dtype=dtype, artifact=artifact)
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
    artifact: Annotated[
        str | None, typer.Option(help="Trained artifact dir (default: the shipped one).")
    ] = None,
) -> None:
    """Serve matryoshka.v1.RerankService (settings also from MATRYOSHKA_* environment variables)."""
    import asyncio
    import logging

    from matryoshka.server.app import serve as run_server
    from matryoshka.server.settings import Settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    flags = {
        "port": port,
        "host": host,
        "metrics_port": metrics_port,
        "model": model,
        "dtype": dtype,
        "artifact": artifact,
    }
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


# -- eval ---------------------------------------------------------------------------------------------

SplitOpt = Annotated[str, typer.Option(help="Qrels split to evaluate (qrels/<split>.tsv).")]
FirstStageOpt = Annotated[
    str,
    typer.Option(
        "--first-stage",
        help="'bm25' (bm25s over the corpus, index cached) or a TREC run file (relative paths are also "
        "looked up under --data).",
    ),
]
TopKOpt = Annotated[int, typer.Option(min=1, help="Re-rank (and evaluate) the first stage's top K.")]
MaxQueriesOpt = Annotated[
    int | None, typer.Option(min=1, help="Evaluate only the first N judged queries (queries.jsonl order).")
]
ModelOpt = Annotated[str, typer.Option(help="Backbone to load.")]
DtypeOpt = Annotated[str, typer.Option(help="bfloat16 (what the service serves) or float32.")]
ScoringOpt = Annotated[
    str | None,
    typer.Option(help="heads (untrained) or query_likelihood (zero-shot); default: the shipped artifact."),
]
ArtifactOpt = Annotated[
    str | None, typer.Option(help="Trained artifact directory (default: the shipped one).")
]
RelevanceOpt = Annotated[
    int | None,
    typer.Option(
        min=1, help="Grade counted as relevant by MRR/MAP/recall (default: 2 if grades reach 3, else 1)."
    ),
]
OutOpt = Annotated[
    Path | None, typer.Option(help="Output folder (default: out/<command>/<collection>-<split>).")
]
ExitRelevantOpt = Annotated[
    float, typer.Option(help="Adaptive exit: stop a candidate once p >= this (calibrated probability).")
]
ExitMinLayerOpt = Annotated[
    int | None, typer.Option(min=1, help="Adaptive exit: first layer that may exit (default: half depth).")
]
BatchOpt = Annotated[
    int | None,
    typer.Option(min=1, help="Queries sent to the executor together (default: enough for ~6 full buckets)."),
]
ProgressOpt = Annotated[bool, typer.Option(help="tqdm progress bars on stderr.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def load_reranker(model: str, dtype: str, scoring: str | None, artifact: str | None = None) -> Reranker:
    """Load the model the eval commands re-rank with (tests replace this function with a tiny model)."""
    from matryoshka.engine.reranker import Reranker

    if scoring not in (None, "heads", "query_likelihood"):
        raise typer.BadParameter(f"use heads or query_likelihood, got {scoring!r}", param_hint="--scoring")
    try:
        return Reranker.load(model, dtype=dtype, scoring=scoring, artifact=artifact)  # type: ignore[arg-type]
    except ValueError as exc:  # unknown backbone or dtype, or an artifact that does not fit
        raise typer.BadParameter(str(exc), param_hint="--model/--dtype/--artifact") from exc


def _eval_input(
    data: Path,
    split: str,
    first_stage: str,
    top_k: int,
    max_queries: int | None,
    relevance_level: int | None,
) -> EvalInput:
    from matryoshka.eval.datasets import DataError
    from matryoshka.eval.rerank_run import prepare

    try:
        return prepare(
            data,
            split=split,
            first_stage_spec=first_stage,
            top_k=top_k,
            max_queries=max_queries,
            relevance_level=relevance_level,
        )
    except DataError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


def _describe_setup(data: EvalInput, reranker: Reranker | None, dtype: str) -> str:
    model = f", model {reranker.info.name} ({reranker.info.scoring}, {dtype})" if reranker else ""
    return (
        f"{data.collection.name} {data.split}: {len(data.query_ids)} queries, top-{data.top_k} of "
        f"{data.first_stage}, relevance level {data.relevance_level}{model}"
    )


@eval_app.callback(invoke_without_command=True)
def eval_compare(
    ctx: typer.Context,
    data: Annotated[Path | None, typer.Option(help="BEIR-format collection folder.")] = None,
    split: SplitOpt = "test",
    first_stage: FirstStageOpt = "bm25",
    top_k: TopKOpt = 100,
    max_queries: MaxQueriesOpt = None,
    plans: Annotated[
        str, typer.Option(help="Comma list of full, light, adaptive; '' for the first stage only.")
    ] = "full,light,adaptive",
    model: ModelOpt = DEFAULT_BACKBONE,
    dtype: DtypeOpt = "bfloat16",
    scoring: ScoringOpt = None,
    artifact: ArtifactOpt = None,
    relevance_level: RelevanceOpt = None,
    out: OutOpt = None,
    exit_relevant: ExitRelevantOpt = 0.99,
    exit_irrelevant: Annotated[
        float, typer.Option(help="Adaptive exit: stop a candidate once p <= this (calibrated probability).")
    ] = 0.02,
    exit_min_layer: ExitMinLayerOpt = None,
    queries_per_batch: BatchOpt = None,
    progress: ProgressOpt = True,
    as_json: JsonOpt = False,
) -> None:
    """First stage vs re-ranked under each plan: metrics, rel perf, FLOPs saved, pairs/s; a TREC run each."""
    if ctx.invoked_subcommand is not None:
        return
    if data is None:
        raise typer.BadParameter("missing --data", param_hint="--data")
    from matryoshka.engine.plan import PlanError
    from matryoshka.eval.report import ExitConfig, compare, format_table, named_plan, parse_plan_names

    try:
        names = parse_plan_names(plans)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--plans") from exc
    evaluation = _eval_input(data, split, first_stage, top_k, max_queries, relevance_level)
    reranker = load_reranker(model, dtype, scoring, artifact) if names else None
    exits = ExitConfig(relevant=exit_relevant, irrelevant=exit_irrelevant, min_layer=exit_min_layer)
    out_dir = out or Path("out") / "eval" / f"{evaluation.collection.name}-{split}"
    try:
        chosen = {name: named_plan(name, reranker.info, exits) for name in names} if reranker else {}
        if reranker is not None:
            for plan in chosen.values():
                plan.resolve(reranker.info)  # fail before any work
            reranker.warmup()
        report = compare(
            reranker,
            evaluation,
            chosen,
            out_dir=out_dir,
            queries_per_batch=queries_per_batch,
            progress=progress,
        )
    except PlanError as exc:
        typer.echo(f"error: plan cannot run on {model}: {exc}", err=True)
        raise typer.Exit(2) from exc
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    typer.echo(format_table(report, _describe_setup(evaluation, reranker, dtype)))
    typer.echo(f"runs written to {out_dir}")


@eval_app.command("sweep")
def eval_sweep(
    data: Annotated[Path, typer.Option(help="BEIR-format collection folder.")],
    split: SplitOpt = "test",
    first_stage: FirstStageOpt = "bm25",
    top_k: TopKOpt = 100,
    max_queries: MaxQueriesOpt = None,
    model: ModelOpt = DEFAULT_BACKBONE,
    dtype: DtypeOpt = "bfloat16",
    scoring: ScoringOpt = None,
    artifact: ArtifactOpt = None,
    relevance_level: RelevanceOpt = None,
    out: OutOpt = None,
    thresholds: Annotated[
        str, typer.Option(help="Comma list of exit thresholds p <= t (one point each).")
    ] = "0.001,0.005,0.01,0.02,0.05,0.1,0.2",
    exit_relevant: ExitRelevantOpt = 0.99,
    exit_min_layer: ExitMinLayerOpt = None,
    queries_per_batch: BatchOpt = None,
    progress: ProgressOpt = True,
    as_json: JsonOpt = False,
) -> None:
    """Figure 4: NDCG@10 vs FLOPs and time saved for depth, width, joint and exit plans (CSV + PNG)."""
    from matryoshka.engine.plan import PlanError
    from matryoshka.eval.sweep import CSV_NAME, PNG_NAME, run_sweep, sweep_points

    try:
        levels = [float(t) for t in thresholds.split(",") if t.strip()]
    except ValueError as exc:
        raise typer.BadParameter(
            f"not a comma list of numbers: {thresholds!r}", param_hint="--thresholds"
        ) from exc
    evaluation = _eval_input(data, split, first_stage, top_k, max_queries, relevance_level)
    reranker = load_reranker(model, dtype, scoring, artifact)
    out_dir = out or Path("out") / "sweep" / f"{evaluation.collection.name}-{split}"
    try:
        points = sweep_points(
            reranker.info, thresholds=levels, relevant=exit_relevant, min_layer=exit_min_layer
        )
        for point in points:
            point.plan.resolve(reranker.info)
        reranker.warmup()
        rows = run_sweep(
            reranker, evaluation, points, out_dir, queries_per_batch=queries_per_batch, progress=progress
        )
    except PlanError as exc:
        typer.echo(f"error: plan cannot run on {model}: {exc}", err=True)
        raise typer.Exit(2) from exc
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    typer.echo(_describe_setup(evaluation, reranker, dtype))
    for row in rows:
        saved = (
            ""
            if "flops_saved" not in row
            else (f"  FLOPs saved {row['flops_saved']:6.1%}  time saved {row['time_saved'] or 0:6.1%}")
        )
        typer.echo(f"{row['family']:<11} nDCG@10 {row['ndcg@10']:.4f}{saved}  {row['label']}")
    typer.echo(f"wrote {out_dir / CSV_NAME} and {out_dir / PNG_NAME}")


# -- train --------------------------------------------------------------------------------------------


def _command_line() -> str:
    """This invocation as a shell command (recorded in artifacts' provenance)."""
    import shlex
    import sys

    return "matryoshka " + " ".join(shlex.quote(a) for a in sys.argv[1:])


@app.command("train")
def train_command(
    data: Annotated[
        list[str],
        typer.Option(help="DIR:SPLIT of a BEIR-format collection to draw groups from (repeatable)."),
    ],
    out: Annotated[Path, typer.Option(help="Artifact directory to write.")],
    workdir: Annotated[
        Path | None, typer.Option(help="Checkpoints, cached passes and groups (default: out/train/<name>).")
    ] = None,
    model: Annotated[str, typer.Option(help="Backbone to train on.")] = DEFAULT_BACKBONE,
    scoring: Annotated[
        str,
        typer.Option(help="heads (per-layer heads) or lens (query likelihood through a depth lens)."),
    ] = "heads",
    lens_layers: Annotated[
        str, typer.Option(help="Comma list of the lensed exit layers (--scoring lens).")
    ] = "10,15,20,25",
    negatives: Annotated[int, typer.Option(min=1, help="BM25 hard negatives per group.")] = 7,
    depth: Annotated[int, typer.Option(min=1, help="BM25 depth negatives are drawn from.")] = 100,
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
    from matryoshka.model.compensation import CompensationConfig
    from matryoshka.model.prompt import Truncation
    from matryoshka.train.data import GroupSpec
    from matryoshka.train.recipe import DataSource, Recipe, train, train_lens
    from matryoshka.train.self_distill import DistillConfig, LoraSettings

    if teacher not in ("query_likelihood", "none"):
        raise typer.BadParameter("use query_likelihood or none", param_hint="--teacher")
    if scoring not in ("heads", "lens"):
        raise typer.BadParameter("use heads or lens", param_hint="--scoring")
    try:
        sources = tuple(DataSource.parse(spec) for spec in data)
        widths = tuple(float(r) for r in ratios.split(",") if r.strip())
        lensed = tuple(int(layer) for layer in lens_layers.split(",") if layer.strip())
        recipe = Recipe(
            backbone=model,
            sources=sources,
            scoring=scoring,  # type: ignore[arg-type]
            lens_layers=lensed,
            dev_fraction=dev_fraction,
            groups=GroupSpec(
                negatives=negatives,
                depth=depth,
                seed=seed,
                max_queries=max_queries,
                cut_min_words=cut_min_words,
            ),
            distill=DistillConfig(
                external_teacher=teacher,  # type: ignore[arg-type]
                self_distill=self_distill,
                groups_per_step=groups_per_step,
                epochs=epochs,
                learning_rate=learning_rate,
                adapter_learning_rate=adapter_learning_rate,
                seed=seed,
                bf16=bf16,
                truncation=Truncation(max_passage_tokens=max_passage_tokens),
            ),
            lora=LoraSettings(rank=lora_rank),
            compensation=CompensationConfig(rank=compensation_rank, ratios=widths)
            if compensation_rank
            else None,
            compensation_steps=compensation_steps,
            ratios=widths,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    command = _command_line()
    run = train_lens if scoring == "lens" else train
    metrics = run(
        recipe, workdir or Path("out") / "train" / out.name, out, command=command, progress=progress
    )
    typer.echo(json.dumps(metrics, indent=2))
    typer.echo(f"artifact written to {out}")


# -- distill ------------------------------------------------------------------------------------------


@app.command("distill")
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
        int, typer.Option(min=0, help="Documents per group sampled from teacher ranks hard+1..depth.")
    ] = 8,
    depth: Annotated[int, typer.Option(min=2, help="Deepest teacher rank sampled.")] = 100,
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
    import torch

    from matryoshka.model.artifact import Provenance, save_artifact
    from matryoshka.model.loading import load_backbone, sha256_file
    from matryoshka.model.matryoshka_model import MatryoshkaModel
    from matryoshka.model.prompt import Truncation
    from matryoshka.train.data import save_groups, split_groups
    from matryoshka.train.listwise import distill_listwise, lora_settings, teacher_agreement

    groups, name = _distill_groups(data, teacher_run, depth, hard, deep, seed, max_queries)
    train_groups, dev_groups = split_groups(groups, dev_fraction, seed)
    if not train_groups:
        typer.echo(f"error: all {len(groups)} groups were held out; lower --dev-fraction", err=True)
        raise typer.Exit(2)
    work = workdir or Path("out") / "distill" / out.name
    hashes = {
        "groups.jsonl": save_groups(groups, work / "groups.jsonl"),
        teacher_run.name: sha256_file(teacher_run),
    }
    try:
        loaded = load_backbone(student, torch.float32)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--student") from exc
    model = MatryoshkaModel.from_hf(
        student,
        loaded.model,
        loaded.tokenizer,
        scoring="heads",
        head_layers=None if depth_layer is None else [depth_layer],
        fingerprint=loaded.sha256,
    )
    truncation = Truncation(max_passage_tokens=max_passage_tokens)
    before = teacher_agreement(model, dev_groups, truncation=truncation)
    summary, adapter = distill_listwise(
        model,
        train_groups,
        work / "student",
        epochs=epochs,
        groups_per_step=groups_per_step,
        learning_rate=learning_rate,
        adapter_learning_rate=adapter_learning_rate,
        temperature=temperature,
        lora=lora_settings(model, lora_rank),
        depth_layer=depth_layer,
        seed=seed,
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
    settings = {
        "student": student,
        "data": name,
        "teacher_run": teacher_run.name,
        "sampling": {"hard": hard, "deep": deep, "depth": depth, "max_queries": max_queries, "seed": seed},
        "depth_layer": depth_layer,
        "dev_fraction": dev_fraction,
        "epochs": epochs,
        "groups_per_step": groups_per_step,
        "learning_rate": learning_rate,
        "adapter_learning_rate": adapter_learning_rate,
        "lora_rank": lora_rank,
        "temperature": temperature,
        "max_passage_tokens": max_passage_tokens,
    }
    command = _command_line()
    save_artifact(model, out, lora=adapter, provenance=Provenance(command, hashes, settings, metrics))
    typer.echo(json.dumps(metrics, indent=2))
    typer.echo(f"artifact written to {out}")


def _distill_groups(
    data: str, teacher_run: Path, depth: int, hard: int, deep: int, seed: int, max_queries: int | None
) -> tuple[list[TrainingGroup], str]:
    """The teacher groups of `distill` and "collection:split"; bad input exits with status 2."""
    from matryoshka.eval.datasets import DataError, load_collection, read_run
    from matryoshka.train.listwise import teacher_groups
    from matryoshka.train.recipe import DataSource

    try:
        source = DataSource.parse(data)
        collection = load_collection(source.path)
        run = read_run(teacher_run, collection)
        groups = teacher_groups(
            collection,
            source.split,
            run,
            depth=depth,
            hard=hard,
            deep=deep,
            seed=seed,
            max_queries=max_queries,
        )
    except DataError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    if not groups:
        typer.echo(
            f"error: no query of {data} has {hard + deep} documents within the top {depth} of {teacher_run}",
            err=True,
        )
        raise typer.Exit(2)
    return groups, f"{collection.name}:{source.split}"
