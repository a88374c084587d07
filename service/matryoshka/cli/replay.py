"""`matryoshka eval record | replay | fit-fusion`: score every candidate at every head layer once under a
width schedule, then replay depth, exit, cascade and fusion plans offline (eval/layer_scores.py,
eval/replay.py), and fit the per-layer fusion weights into an artifact on held-out recordings."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from matryoshka.cli.common import ModelOpt, ProgressOpt, backbone, fail, parse_width

RecordingOpt = Annotated[list[Path], typer.Option("--recording", help="A recording (eval record --out).")]
MARGINS = (0.0, 0.005, 0.01, 0.02, 0.05, 0.1)
IRRELEVANT = (0.01, 0.02, 0.05, 0.1, 0.2)


def record_command(
    data: Annotated[Path, typer.Option(help="BEIR-format collection folder.")],
    out: Annotated[Path, typer.Option(help="The recording to write (JSON).")],
    split: Annotated[str, typer.Option(help="Qrels split.")] = "test",
    first_stage: Annotated[str, typer.Option("--first-stage", help="'bm25' or a TREC run file.")] = "bm25",
    top_k: Annotated[int, typer.Option(min=1, help="Candidates per query.")] = 100,
    max_queries: Annotated[int | None, typer.Option(min=1, help="Only the first N judged queries.")] = None,
    width: Annotated[list[str] | None, typer.Option(help="Width step LAYER:RATIO (repeatable).")] = None,
    model: ModelOpt = None,
    dtype: Annotated[str, typer.Option(help="auto (measured), bfloat16 or float32.")] = "auto",
    artifact: Annotated[str | None, typer.Option(help="Artifact directory (default: shipped).")] = None,
    progress: ProgressOpt = True,
) -> None:
    """Score every candidate at every head layer (full depth, under --width) and save the scores."""
    import time

    from matryoshka.cli.eval import _eval_input, load_reranker
    from matryoshka.eval.layer_scores import candidates_of, record, save

    evaluation = _eval_input(data, split, first_stage, top_k, max_queries, None)
    steps = parse_width(width or [])
    reranker = load_reranker(backbone(model), dtype, None, artifact)
    reranker.warmup()
    started = time.perf_counter()
    rows = record(reranker, candidates_of(evaluation), steps, progress=progress)
    seconds = time.perf_counter() - started
    meta = {
        "data": str(data),
        "split": split,
        "first_stage": first_stage,
        "top_k": top_k,
        "relevance_level": evaluation.relevance_level,
        "width": {str(k): v.ratio for k, v in steps.items()},
        "head_layers": list(reranker.info.head_layers),
        "num_layers": reranker.info.num_layers,
        "model": reranker.info.name,
        "seconds": seconds,
    }
    save(rows, out, meta)
    typer.echo(f"{len(rows)} pairs in {seconds:.0f} s ({len(rows) / seconds:.2f} pairs/s) -> {out}")


def replay_command(
    recording: RecordingOpt,
    artifact: Annotated[
        str | None, typer.Option(help="Artifact whose fusion weights to use (default: shipped).")
    ] = None,
    model: ModelOpt = None,
    first_stage_top: Annotated[
        list[int] | None,
        typer.Option(min=1, help="Also replay plans that run only the first stage's top N (repeatable)."),
    ] = None,
) -> None:
    """nDCG@10 and FLOPs saved of depth, cascade and exit plans replayed on each recording, ranked by
    probability and fused with the first stage, and the share of the fused full plan's gain kept."""
    from matryoshka.eval.replay import load_recording, replay_table

    weights = _fusion_weights(backbone(model), artifact)
    typer.echo(f"fusion weights: {weights}")
    for path in recording:
        rec = load_recording(path)
        typer.echo(f"{path}: {len(rec.queries)} queries, width {rec.meta['width'] or 'full'}")
        for line in replay_table(rec, _qrels(rec), weights, MARGINS, IRRELEVANT, first_stage_top or ()):
            typer.echo(line)


def fit_fusion_command(
    recording: RecordingOpt,
    artifact: Annotated[Path, typer.Option(help="Artifact directory to write the weights into.")],
) -> None:
    """Fit each head layer's fusion weight on the recordings (full width, held-out data) and store it in
    the artifact's calibration."""
    from matryoshka.eval.replay import ArtifactError, fit_fusion, load_recording, store_fusion

    recordings = [load_recording(p) for p in recording]
    for path, rec in zip(recording, recordings, strict=True):
        if rec.meta["width"]:
            fail(f"error: {path} was recorded under a width schedule; fit on full-width recordings", 2)
    weights = fit_fusion([(rec, _qrels(rec)) for rec in recordings])
    sources = ", ".join(f"{r.meta['data']}:{r.meta['split']}" for r in recordings)
    try:
        store_fusion(artifact, weights, sources)
    except ArtifactError as exc:
        fail(f"error: {exc}", 2, exc)
    typer.echo(f"fusion weights {weights} (fitted on {sources}) -> {artifact}")


def _qrels(rec: object) -> dict[str, dict[str, int]]:
    from matryoshka.data.datasets import load_collection
    from matryoshka.eval.replay import Recording

    assert isinstance(rec, Recording)
    return load_collection(rec.meta["data"]).qrels(rec.meta["split"], unknown_docs="keep")


def _fusion_weights(model: str, artifact: str | None) -> dict[int, float]:
    from matryoshka.eval.replay import shipped_fusion

    return shipped_fusion(model, artifact)
