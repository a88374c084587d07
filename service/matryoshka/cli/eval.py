"""`matryoshka eval` (first stage vs named plans) and `matryoshka eval sweep` (the Figure 4 curves)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from matryoshka.cli import replay
from matryoshka.cli.common import ModelOpt, ProgressOpt, backbone, fail

if TYPE_CHECKING:
    from matryoshka.engine.reranker import Reranker
    from matryoshka.eval.rerank_run import EvalInput

app = typer.Typer(
    no_args_is_help=True,
    help="Evaluate on a BEIR-format collection: `eval --data DIR` compares plans, `eval sweep` draws curves.",
)

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
DtypeOpt = Annotated[
    str,
    typer.Option(
        help="auto (bf16 only where a probe finds it faster, as the service does), bfloat16 or float32."
    ),
]
ScoringOpt = Annotated[
    str | None,
    typer.Option(
        help="heads (untrained), query_likelihood (zero-shot) or cosine (encoders: the bi-encoder's "
        "per-layer cosine); default: the shipped artifact."
    ),
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
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
FuseOpt = Annotated[
    bool,
    typer.Option(
        help="Send each document's first-stage score with it, as a client with a retriever does: the engine "
        "fuses it with weak heads and ranks documents no head reached by it (engine/fusion.py)."
    ),
]


def load_reranker(model: str, dtype: str, scoring: str | None, artifact: str | None = None) -> Reranker:
    """Load the model the eval commands re-rank with (tests replace this function with a tiny model)."""
    from matryoshka.engine.reranker import Reranker

    if scoring not in (None, "heads", "query_likelihood", "cosine"):
        raise typer.BadParameter(
            f"use heads, query_likelihood or cosine, got {scoring!r}", param_hint="--scoring"
        )
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
    from matryoshka.data.datasets import DataError
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
        fail(f"error: {exc}", 2, exc)


def _describe_setup(data: EvalInput, reranker: Reranker | None) -> str:
    model = (
        f", model {reranker.info.name} ({reranker.info.scoring}, {reranker.dtype.name})" if reranker else ""
    )
    return (
        f"{data.collection.name} {data.split}: {len(data.query_ids)} queries, top-{data.top_k} of "
        f"{data.first_stage}, relevance level {data.relevance_level}{model}"
    )


@app.callback(invoke_without_command=True)
def eval_compare(
    ctx: typer.Context,
    data: Annotated[Path | None, typer.Option(help="BEIR-format collection folder.")] = None,
    split: SplitOpt = "test",
    first_stage: FirstStageOpt = "bm25",
    top_k: TopKOpt = 100,
    max_queries: MaxQueriesOpt = None,
    plans: Annotated[
        str,
        typer.Option(
            help="Comma list of full, light, adaptive, lean, lean-short; '' for the first stage only."
        ),
    ] = "full,light,adaptive",
    model: ModelOpt = None,
    dtype: DtypeOpt = "auto",
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
    fuse: FuseOpt = True,
) -> None:
    """First stage vs re-ranked under each plan: metrics, rel perf, FLOPs saved, pairs/s; a TREC run each."""
    if ctx.invoked_subcommand is not None:
        return
    if data is None:
        raise typer.BadParameter("missing --data", param_hint="--data")
    from matryoshka.engine.named_plans import ExitConfig, named_plan, parse_plan_names
    from matryoshka.engine.plan import PlanError
    from matryoshka.eval.report import compare, format_table

    try:
        names = parse_plan_names(plans)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--plans") from exc
    evaluation = _eval_input(data, split, first_stage, top_k, max_queries, relevance_level)
    model = backbone(model)
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
            fuse=fuse,
        )
    except PlanError as exc:
        fail(f"error: plan cannot run on {model}: {exc}", 2, exc)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    typer.echo(format_table(report, _describe_setup(evaluation, reranker)))
    typer.echo(f"runs written to {out_dir}")


@app.command("sweep")
def eval_sweep(
    data: Annotated[Path, typer.Option(help="BEIR-format collection folder.")],
    split: SplitOpt = "test",
    first_stage: FirstStageOpt = "bm25",
    top_k: TopKOpt = 100,
    max_queries: MaxQueriesOpt = None,
    model: ModelOpt = None,
    dtype: DtypeOpt = "auto",
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
    model = backbone(model)
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
        fail(f"error: plan cannot run on {model}: {exc}", 2, exc)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    typer.echo(_describe_setup(evaluation, reranker))
    for row in rows:
        saved = (
            ""
            if "flops_saved" not in row
            else (f"  FLOPs saved {row['flops_saved']:6.1%}  time saved {row['time_saved'] or 0:6.1%}")
        )
        typer.echo(f"{row['family']:<11} nDCG@10 {row['ndcg@10']:.4f}{saved}  {row['label']}")
    typer.echo(f"wrote {out_dir / CSV_NAME} and {out_dir / PNG_NAME}")


@app.command("long")
def eval_long(
    data: Annotated[Path, typer.Option(help="BEIR-format collection folder.")],
    split: SplitOpt = "test",
    first_stage: FirstStageOpt = "bm25",
    top_k: TopKOpt = 20,
    max_queries: MaxQueriesOpt = None,
    truncate_tokens: Annotated[
        int, typer.Option(min=1, help="The truncation reading: document tokens kept.")
    ] = 192,
    chunk_tokens: Annotated[int, typer.Option(min=1, help="Chunked readings: tokens per window.")] = 128,
    chunk_overlap: Annotated[int, typer.Option(min=0, help="Chunked readings: tokens windows share.")] = 32,
    aggregates: Annotated[
        str, typer.Option(help="Comma list of chunked readings to run: max, first, mean.")
    ] = "max,first",
    model: ModelOpt = None,
    dtype: DtypeOpt = "auto",
    artifact: ArtifactOpt = None,
    relevance_level: RelevanceOpt = None,
    out: OutOpt = None,
    progress: ProgressOpt = True,
    as_json: JsonOpt = False,
) -> None:
    """Long documents: truncation vs chunking (windows aggregated by max/first/mean) at full depth on
    the same top-k lists; nDCG@10 beside rows, FLOPs and seconds per query; a TREC run each."""
    from matryoshka.engine.plan import Plan
    from matryoshka.engine.reranker import Chunking, Truncation
    from matryoshka.eval.long_documents import Reading, candidate_lengths, compare_readings, format_readings

    chosen = [a.strip() for a in aggregates.split(",") if a.strip()]
    if any(a not in ("max", "first", "mean") for a in chosen):
        raise typer.BadParameter(f"use max, first or mean, got {aggregates!r}", param_hint="--aggregates")
    if chunk_overlap >= chunk_tokens:
        raise typer.BadParameter("must be below --chunk-tokens", param_hint="--chunk-overlap")
    evaluation = _eval_input(data, split, first_stage, top_k, max_queries, relevance_level)
    reranker = load_reranker(backbone(model), dtype, None, artifact)
    readings = [Reading(f"truncate-{truncate_tokens}", Truncation(max_passage_tokens=truncate_tokens))]
    readings += [
        Reading(
            f"chunk-{chunk_tokens}/{chunk_overlap}-{a}",
            Truncation(),
            Chunking(chunk_tokens, chunk_overlap, a),  # type: ignore[arg-type]
        )
        for a in chosen
    ]
    out_dir = out or Path("out") / "eval-long" / f"{evaluation.collection.name}-{split}"
    reranker.warmup()
    report = compare_readings(reranker, evaluation, Plan(), readings, out_dir=out_dir, progress=progress)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    typer.echo(_describe_setup(evaluation, reranker))
    typer.echo(format_readings(report, candidate_lengths(reranker, evaluation), truncate_tokens))
    typer.echo(f"runs written to {out_dir}")


app.command("record")(replay.record_command)
app.command("replay")(replay.replay_command)
app.command("fit-fusion")(replay.fit_fusion_command)
