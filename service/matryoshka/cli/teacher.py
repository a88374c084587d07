"""`matryoshka teacher-run`: a teacher's scores over BM25 candidates, cached as a resumable TREC run.

Teachers: `smollm2-ql` (SmolLM2 query likelihood at full depth, bf16), `minilm-cosine` (the
all-MiniLM-L6-v2 bi-encoder's cosine, i.e. split-pair scoring at its last layer), or `fuse` (the
per-query z-scored, weighted sum of the runs given with `--fuse`). The run feeds `matryoshka distill
--teacher-run`. Benchmarks are refused.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from matryoshka.cli.common import fail

TEACHERS = ("smollm2-ql", "minilm-cosine", "fuse")


def teacher_run_command(
    teacher: Annotated[str, typer.Option(help=f"One of {', '.join(TEACHERS)}.")],
    out: Annotated[Path, typer.Option(help="TREC run to write (appended to and resumed if it exists).")],
    data: Annotated[str | None, typer.Option(help="DIR:SPLIT whose queries are scored.")] = None,
    candidates: Annotated[int, typer.Option(min=1, help="BM25 candidates per query.")] = 100,
    max_queries: Annotated[int | None, typer.Option(min=1, help="First N judged queries.")] = None,
    fuse: Annotated[list[Path] | None, typer.Option(help="Runs to fuse (with --teacher fuse).")] = None,
    weights: Annotated[str, typer.Option(help="Fusion weights, one per --fuse run.")] = "0.5,0.5",
    dtype: Annotated[str, typer.Option(help="auto (measured), bfloat16 or float32.")] = "auto",
) -> None:
    """Score a teacher once over BM25 candidates (resumable), or fuse cached teacher runs."""
    from matryoshka.data.datasets import DataError, document_text, load_collection, write_run
    from matryoshka.data.first_stage import first_stage
    from matryoshka.data.sources import DataSource, refuse_benchmark
    from matryoshka.train.teacher_run import fuse_runs, read_scores, score_run

    if teacher not in TEACHERS:
        fail(f"--teacher must be one of {', '.join(TEACHERS)}, got {teacher!r}")
    if teacher == "fuse":
        runs = [read_scores(p) for p in fuse or []]
        shares = [float(w) for w in weights.split(",")]
        try:
            write_run(fuse_runs(runs, shares), out, "fusion")
        except ValueError as exc:
            fail(str(exc), cause=exc)
        return
    if data is None:
        fail("--data DIR:SPLIT is needed to score a teacher")
    from matryoshka.engine.reranker import Reranker

    started = time.perf_counter()
    try:
        source = DataSource.parse(data)
        collection = load_collection(source.path)
        refuse_benchmark(collection)
        run = first_stage(collection, "bm25", source.split, candidates)
    except (DataError, ValueError) as exc:
        fail(str(exc), cause=exc)
    qids = list(run)[:max_queries] if max_queries else list(run)
    if teacher == "smollm2-ql":
        reranker = Reranker.load("smollm2-135m", dtype=dtype, scoring="query_likelihood")
    else:
        reranker = Reranker.load("minilm-l6", dtype=dtype, scoring="cosine")

    def score(query: str, passages: list[str]) -> list[float]:
        result = reranker.rerank(query, passages, score_type="logit")
        by_index = {r.index: r.score for r in result.results}
        return [by_index[i] for i in range(len(passages))]

    def log(message: str) -> None:
        typer.echo(f"[{time.perf_counter() - started:7.0f}s] {message}", err=True)

    passages = {d: document_text(collection.corpus[d]) for q in qids for d in run[q]}
    score_run(
        out,
        collection.queries,
        {q: list(run[q]) for q in qids},
        passages,
        score,
        tag=teacher,
        log=log,
    )
