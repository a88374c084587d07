"""Training groups: a query, one judged positive and hard negatives from BM25's top-k.

Groups come from BEIR-format collections (scifact train, nfcorpus-dev); the benchmark collection
(trec-dl-2019) is refused so its queries and passages can never leak into training. Sampling is
deterministic given the seed. Groups are stored as JSON lines so a training job reads exactly the
data its manifest hashes, and teacher scores (from a TREC run file) can be attached to them.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from matryoshka.data.datasets import Collection, DataError, Run, document_text
from matryoshka.data.first_stage import bm25_run
from matryoshka.data.sources import refuse_benchmark
from matryoshka.model.loading import sha256_file


@dataclass(frozen=True)
class Candidate:
    """One passage of a group; `teacher` is a teacher model's score when one was attached."""

    doc_id: str
    text: str
    label: int  # 1 for the judged positive, 0 for a negative
    teacher: float | None = None


@dataclass(frozen=True)
class TrainingGroup:
    """A query with its candidates; the positive is always `candidates[0]`."""

    query_id: str
    query: str
    candidates: tuple[Candidate, ...]
    source: str = ""  # collection name (or "generated")

    @property
    def has_teacher(self) -> bool:
        """Whether every candidate carries a teacher score."""
        return all(c.teacher is not None for c in self.candidates)


@dataclass(frozen=True)
class GroupSpec:
    """How groups are drawn: negatives per group, the BM25 candidates they come from, and the seed."""

    negatives: int = 7
    num_candidates: int = 100  # BM25's top this many per query
    seed: int = 13
    max_queries: int | None = None
    min_grade: int = 1  # judged grades >= this can be a group's positive
    # Passage-length augmentation: when > 0, each candidate keeps a random number of its leading
    # words, drawn uniformly from [cut_min_words, its length], so a head on the last token sees
    # short and long passages side by side (training corpora are abstracts, MS MARCO passages are short).
    cut_min_words: int = 0


def build_groups(collection: Collection, split: str, spec: GroupSpec) -> list[TrainingGroup]:
    """One group per judged query with a positive and at least one BM25 negative, in queries.jsonl order.

    The positive is drawn among the query's judged positives (grade >= min_grade); negatives among
    BM25's top `num_candidates` minus every document judged with a positive grade (judged non-relevant ones
    stay in). A per-query RNG seeded from (seed, query id) means adding queries never changes others.
    """
    refuse_benchmark(collection)
    if spec.negatives < 1:
        raise ValueError(f"negatives must be >= 1, got {spec.negatives}")
    if spec.cut_min_words < 0:
        raise ValueError(f"cut_min_words must be >= 0, got {spec.cut_min_words}")
    qrels = collection.qrels(split)
    query_ids = [q for q in collection.query_ids(split) if _positives(qrels[q], spec.min_grade)]
    if spec.max_queries is not None:
        query_ids = query_ids[: spec.max_queries]
    run = bm25_run(collection, query_ids, spec.num_candidates)
    groups = []
    for qid in query_ids:
        relevant = set(_positives(qrels[qid], 1))  # any positive grade: never a negative
        group = _group(collection, qid, _positives(qrels[qid], spec.min_grade), relevant, run, spec)
        if group is not None:
            groups.append(group)
    return groups


def attach_teacher(groups: Sequence[TrainingGroup], run: Run, *, source: str) -> list[TrainingGroup]:
    """Copy teacher scores from a run onto every candidate; a missing (query, doc) score is an error."""
    out = []
    for g in groups:
        scores = run.get(g.query_id, {})
        missing = [c.doc_id for c in g.candidates if c.doc_id not in scores]
        if missing:
            raise DataError(f"{source}: no teacher score for query {g.query_id!r}, document {missing[0]!r}")
        cands = tuple(Candidate(c.doc_id, c.text, c.label, scores[c.doc_id]) for c in g.candidates)
        out.append(TrainingGroup(g.query_id, g.query, cands, g.source))
    return out


def save_groups(groups: Iterable[TrainingGroup], path: Path) -> str:
    """Write groups as JSON lines; returns the file's sha256 (recorded in the artifact manifest)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for g in groups:
            f.write(json.dumps(asdict(g), ensure_ascii=False) + "\n")
    return sha256_file(path)


def load_groups(path: Path) -> list[TrainingGroup]:
    """Read groups written by `save_groups`; errors name the file and line."""
    groups = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            try:
                obj = json.loads(line)
                cands = tuple(Candidate(**c) for c in obj["candidates"])
                groups.append(TrainingGroup(obj["query_id"], obj["query"], cands, obj.get("source", "")))
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise DataError(f"{path}:{n}: not a training group ({exc})") from exc
            if not cands or cands[0].label != 1:
                raise DataError(f"{path}:{n}: a group needs its positive first")
    return groups


def split_groups(
    groups: Sequence[TrainingGroup], dev_fraction: float, seed: int
) -> tuple[list[TrainingGroup], list[TrainingGroup]]:
    """Deterministic (train, dev) split by query, for calibration and early checks."""
    order = sorted(range(len(groups)), key=lambda i: _stable_hash(f"{seed}:{groups[i].query_id}"))
    n_dev = round(len(groups) * dev_fraction)
    dev = set(order[:n_dev])
    return [g for i, g in enumerate(groups) if i not in dev], [g for i, g in enumerate(groups) if i in dev]


def _positives(judged: Mapping[str, int], min_grade: int) -> list[str]:
    return sorted(doc for doc, grade in judged.items() if grade >= min_grade)


def _group(
    collection: Collection,
    qid: str,
    positives: list[str],
    relevant: set[str],
    run: Run,
    spec: GroupSpec,
) -> TrainingGroup | None:
    rng = random.Random(_stable_hash(f"{spec.seed}:{qid}"))
    pool = [doc for doc, _ in sorted(run.get(qid, {}).items(), key=lambda kv: (-kv[1], kv[0]))]
    pool = [doc for doc in pool if doc not in relevant]
    known = [doc for doc in positives if doc in collection.corpus]
    if not pool or not known:
        return None
    positive = rng.choice(known)
    negatives = rng.sample(pool, min(spec.negatives, len(pool)))
    cands = tuple(
        Candidate(doc, _cut(document_text(collection.corpus[doc]), rng, spec.cut_min_words), label)
        for doc, label in [(positive, 1), *((doc, 0) for doc in negatives)]
    )
    return TrainingGroup(qid, collection.queries[qid], cands, collection.name)


def _cut(text: str, rng: random.Random, min_words: int) -> str:
    """`text` cut to a random number of leading words in [min_words, all] (unchanged when min_words is 0)."""
    words = text.split()
    if min_words <= 0 or len(words) <= min_words:
        return text
    return " ".join(words[: rng.randint(min_words, len(words))])


def _stable_hash(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
