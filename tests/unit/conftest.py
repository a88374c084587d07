"""Fixtures for the evaluation tests: a tiny BEIR collection with a first-stage run, a tiny re-ranker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from matryoshka.engine.reranker import Reranker
from matryoshka.model.matryoshka_model import MatryoshkaModel

# Texts use the tiny tokenizer's vocabulary (tests/conftest.py WORDS) so rows are not all [UNK].
EVAL_DOCS = {
    "d1": ("paris", "paris is the capital city of france"),
    "d2": ("", "the river water is blue"),
    "d3": ("cat", "the cat sat on the mat"),
    "d4": ("", "the dog ran to the park"),
    "d5": ("sun", "the sun is a hot star"),
    "d6": ("", "blue sky and green tree"),
    "d7": ("", "which city is the capital"),
    "d8": ("", "water is blue"),
}
EVAL_QUERIES = {
    "q1": "what is the capital of france",
    "q2": "where is the cat",
    "q3": "what is the sun",
    "q4": "who ran to the park",  # judged, absent from the run file
    "q5": "why is the sky blue",  # in the run file, not judged
}
# Graded 0-3, so the default relevance level is 2.
EVAL_QRELS = [
    ("q1", "d1", 3),
    ("q1", "d7", 1),
    ("q1", "d2", 0),
    ("q2", "d3", 2),
    ("q2", "d4", 0),
    ("q3", "d5", 3),
    ("q3", "d6", 1),
    ("q4", "d4", 2),
]
# q1 ranks the grade-0 doc first; q3 has 4 candidates, so --top-k 3 really cuts.
EVAL_RUN = {
    "q1": [("d2", 4.0), ("d7", 3.0), ("d1", 2.0), ("d3", 1.0)],
    "q2": [("d4", 3.0), ("d3", 2.0), ("d8", 1.0)],
    "q3": [("d6", 4.0), ("d5", 3.0), ("d1", 2.0), ("d2", 1.0)],
    "q5": [("d6", 2.0), ("d8", 1.0)],
}
RUN_FILE = "runs/first.trec"


@pytest.fixture
def eval_collection(tmp_path: Path) -> Path:
    """A BEIR-format folder with graded qrels/test.tsv and runs/first.trec."""
    root = tmp_path / "tiny-beir"
    (root / "qrels").mkdir(parents=True)
    (root / "runs").mkdir()
    corpus = [{"_id": d, "title": title, "text": text} for d, (title, text) in EVAL_DOCS.items()]
    (root / "corpus.jsonl").write_text("".join(json.dumps(c) + "\n" for c in corpus))
    queries = [{"_id": q, "text": text} for q, text in EVAL_QUERIES.items()]
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    lines = ["query-id\tcorpus-id\tscore", *(f"{q}\t{d}\t{g}" for q, d, g in EVAL_QRELS)]
    (root / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n")
    run_lines = [
        f"{q} Q0 {d} {rank} {score} bm25"
        for q, ranking in EVAL_RUN.items()
        for rank, (d, score) in enumerate(ranking, 1)
    ]
    (root / RUN_FILE).write_text("\n".join(run_lines) + "\n")
    return root


@pytest.fixture
def tiny_reranker(llama_model: MatryoshkaModel) -> Reranker:
    """A re-ranker over the random 4-layer Llama (heads on every layer); no real weights."""
    return Reranker(llama_model)
