"""Teacher scores cached on disk as a TREC run, computed once and resumable, and their fusion.

Scoring a teacher (SmolLM2 query likelihood at full depth: ~4 pairs/s on two cores) is the most
expensive step of distillation, so `score_run` writes each query's scores to the run file as soon as
they exist and records the file's length after every completed query in a progress file next to it.
A rerun truncates the run to the last recorded length (dropping a query cut off mid-write) and
scores only the queries not yet in it. The result is an ordinary TREC run: `matryoshka distill
--teacher-run` reads it, and `fuse_runs` combines teachers (per-query z-scores, weighted).
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

ScoreFn = Callable[[str, list[str]], list[float]]  # (query, passages) -> one score per passage
Run = dict[str, dict[str, float]]


def progress_file(run_path: Path) -> Path:
    """Where `score_run` records the queries it completed and the run file's length after each."""
    return run_path.with_name(run_path.name + ".progress")


def _resume(run_path: Path) -> set[str]:
    """Cut the run back to its last completed query; returns the completed query ids."""
    progress = progress_file(run_path)
    done: set[str] = set()
    length = 0
    if progress.is_file():
        for line in progress.read_text().splitlines():
            record = json.loads(line)
            done.add(record["qid"])
            length = int(record["bytes"])
    if run_path.is_file() and run_path.stat().st_size != length:
        with run_path.open("r+b") as f:
            f.truncate(length)
    return done


def score_run(
    run_path: Path,
    queries: Mapping[str, str],
    candidates: Mapping[str, Sequence[str]],
    passages: Mapping[str, str],
    score: ScoreFn,
    *,
    tag: str = "teacher",
    log: Callable[[str], None] | None = None,
) -> Run:
    """Score every query's candidates with `score`, appending to `run_path`; skips completed queries.

    `candidates` maps query ids to document ids (e.g. the BM25 top-100), `passages` document ids to
    the text the teacher reads. Returns the whole run (cached and new queries).
    """
    run_path.parent.mkdir(parents=True, exist_ok=True)
    done = _resume(run_path)
    todo = [qid for qid in candidates if qid not in done and candidates[qid]]
    for n, qid in enumerate(todo, 1):
        docs = list(candidates[qid])
        scores = score(queries[qid], [passages[d] for d in docs])
        if len(scores) != len(docs):
            raise ValueError(f"teacher returned {len(scores)} scores for {len(docs)} passages of {qid}")
        ranked = sorted(zip(docs, scores, strict=True), key=lambda x: -x[1])
        lines = "".join(f"{qid} Q0 {d} {r} {s:.6f} {tag}\n" for r, (d, s) in enumerate(ranked, 1))
        with run_path.open("a") as f:
            f.write(lines)
            f.flush()
            os.fsync(f.fileno())
            size = f.tell()
        with progress_file(run_path).open("a") as f:
            f.write(json.dumps({"qid": qid, "bytes": size}) + "\n")
        if log is not None:
            log(f"{tag}: {n}/{len(todo)} queries scored ({len(done) + n} in the run)")
    return read_scores(run_path)


def read_scores(run_path: Path) -> Run:
    """{qid: {doc: score}} of a TREC run file (no collection check; see data.datasets.read_run)."""
    run: Run = {}
    if not run_path.is_file():
        return run
    for line in run_path.read_text().splitlines():
        qid, _, doc, _, score, _ = line.split()
        run.setdefault(qid, {})[doc] = float(score)
    return run


def fuse_runs(runs: Sequence[Mapping[str, Mapping[str, float]]], weights: Sequence[float]) -> Run:
    """Weighted sum of per-query z-scored runs over the documents every run scored for that query."""
    if len(runs) != len(weights) or not runs:
        raise ValueError("give one weight per run, and at least one run")
    fused: Run = {}
    for qid in set.intersection(*(set(r) for r in runs)):
        docs = sorted(set.intersection(*(set(r[qid]) for r in runs)))
        if not docs:
            continue
        total = dict.fromkeys(docs, 0.0)
        for run, weight in zip(runs, weights, strict=True):
            values = [run[qid][d] for d in docs]
            mean = statistics.fmean(values)
            spread = statistics.pstdev(values) or 1.0
            for d, v in zip(docs, values, strict=True):
                total[d] += weight * (v - mean) / spread
        fused[qid] = total
    return fused
