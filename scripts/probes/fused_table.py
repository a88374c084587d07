"""What the headroom probes share: the resumable scoring of each held-out collection's BM25 candidates,
per-query z-scores of those scores, weighted sums of them, and nDCG@10 per collection with the mean,
printed as the markdown tables of docs/results.md."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import ir_measures

from matryoshka.data.datasets import document_text, load_collection
from matryoshka.data.first_stage import first_stage

# the held-out collections of the probes: (name under ../shared/data, split)
COLLECTIONS = (("scifact", "test"), ("cranfield", "test"), ("cacm", "test"), ("nfcorpus-dev", "dev"))
# {collection: {qid: {doc: [score, ...]}}}
Scores = dict[str, dict[str, dict[str, list[float]]]]
# a probe's scores of one query's candidates: (query, passage texts, BM25 scores) -> a list per candidate
CandidateScorer = Callable[[str, list[str], list[float]], list[list[float]]]


def collect_scores(path: Path, data: Path, queries: int, top_k: int, scorer: CandidateScorer) -> Scores:
    """{collection: {qid: {doc: [bm25, *scorer's]}}} over the first `queries` of each BM25 top-`top_k` run
    (queries without candidates skipped), resumed from `path` and saved there after every query."""
    found = json.loads(path.read_text()) if path.exists() else {}
    for name, split in COLLECTIONS:
        collection = load_collection(data / name)
        run = first_stage(collection, "bm25", split, top_k)
        done = found.setdefault(name, {})
        started, pairs = time.perf_counter(), 0
        for qid in list(run)[:queries]:
            if qid in done or not run[qid]:
                continue
            docs = list(run[qid])
            bm25 = [run[qid][d] for d in docs]
            texts = [document_text(collection.corpus[d]) for d in docs]
            scored = scorer(collection.queries[qid], texts, bm25)
            done[qid] = {d: [bm25[i], *scored[i]] for i, d in enumerate(docs)}
            pairs += len(docs)
            path.write_text(json.dumps(found))
        if pairs:
            print(f"{name}: {pairs / (time.perf_counter() - started):.1f} pairs/s", flush=True)
    return found


def zscores(values: Sequence[float]) -> list[float]:
    """Per-query z-normalisation (a constant list maps to zeros)."""
    mean, spread = statistics.mean(values), statistics.pstdev(values) or 1.0
    return [(v - mean) / spread for v in values]


def ndcg10(qrels: Mapping[str, Mapping[str, int]], run: list[ir_measures.ScoredDoc]) -> float:
    """nDCG@10 of `run` over the queries it ranks."""
    queries = {s.query_id for s in run}
    judged = [ir_measures.Qrel(q, d, int(r)) for q in queries for d, r in qrels.get(q, {}).items()]
    return float(ir_measures.calc_aggregate([ir_measures.nDCG @ 10], judged, run)[ir_measures.nDCG @ 10])


def print_table(rows: Mapping[str, Sequence[float]]) -> None:
    """One markdown row per label: its value per collection of COLLECTIONS and their mean."""
    print("| nDCG@10 | " + " | ".join(n for n, _ in COLLECTIONS) + " | mean |")
    print("|---|" + "---:|" * (len(COLLECTIONS) + 1))
    for label, values in rows.items():
        cells = " | ".join(f"{v:.4f}" for v in values)
        print(f"| {label} | {cells} | {statistics.mean(values):.4f} |")


def sums_table(found: Scores, data: Path, sums: Mapping[str, Sequence[float]], order: Sequence[int]) -> None:
    """Print nDCG@10 of every weighted sum of z-scores; weight i applies to stored score `order[i]`."""
    rows: dict[str, list[float]] = {}
    for name, split in COLLECTIONS:
        qrels = load_collection(data / name).qrels(split)
        for label, weights in sums.items():
            run = []
            for qid, docs in found[name].items():
                ids = list(docs)
                if not ids:
                    continue
                columns = [zscores([docs[d][i] for d in ids]) for i in order]
                for j, d in enumerate(ids):
                    key = sum(w * column[j] for w, column in zip(weights, columns, strict=True))
                    run.append(ir_measures.ScoredDoc(qid, d, key))
            rows.setdefault(label, []).append(ndcg10(qrels, run))
    print_table(rows)
