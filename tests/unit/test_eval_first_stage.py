"""BM25 first stage over a tiny collection: ranking, empty queries and the on-disk index cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from matryoshka.data.datasets import Collection, load_collection
from matryoshka.data.first_stage import (
    CACHE_ENV,
    BM25Settings,
    bm25_run,
    default_cache_dir,
    first_stage,
    load_or_build_index,
)

DOCS = [
    ("d1", "Photosynthesis", "Chlorophyll absorbs light so that plants turn sunlight into sugar."),
    ("d2", "Plants", "Plants need water and light to grow."),
    ("d3", "The cat", "The cat sat on the mat in the sun."),
    ("d4", "Solar power", "Solar panels turn sunlight into electricity."),
    ("d5", "Rivers", "A river carries water to the sea."),
    ("d6", "Paris", "Paris is the capital city of France."),
    ("d7", "Stars", "The sun is a hot star made of plasma."),
    ("d8", "", "Dogs ran in the park under a green tree."),
]
QUERIES = {
    "q1": "how does chlorophyll drive photosynthesis",
    "q2": "water for plants",
    "q3": "is the sun a star",
}
QRELS = "query-id\tcorpus-id\tscore\nq1\td1\t3\nq1\td2\t1\nq2\td2\t2\nq2\td5\t1\nq3\td7\t3\nq3\td3\t0\n"


def write_fixture(root: Path) -> Path:
    """A BEIR-format folder: 8 docs, 3 queries, graded qrels/test.tsv."""
    root.mkdir(parents=True)
    corpus = [{"_id": i, "title": t, "text": x} for i, t, x in DOCS]
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in corpus))
    queries = [{"_id": qid, "text": text} for qid, text in QUERIES.items()]
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (root / "qrels").mkdir()
    (root / "qrels" / "test.tsv").write_text(QRELS)
    return root


@pytest.fixture
def collection(tmp_path: Path) -> Collection:
    """The fixture collection, loaded."""
    return load_collection(write_fixture(tmp_path / "tiny"))


def test_rare_query_words_rank_first(collection: Collection, tmp_path: Path) -> None:
    run = bm25_run(collection, ["q1", "q2", "q3"], k=3, cache_dir=tmp_path / "cache")
    assert list(run) == ["q1", "q2", "q3"]
    assert next(iter(run["q1"])) == "d1"  # the only doc with "chlorophyll" and "photosynthesis"
    assert list(run["q1"]) == ["d1"]  # no other doc shares a non-stopword with q1
    assert next(iter(run["q2"])) == "d2"  # "water" and "plants"
    assert set(run["q3"]) == {"d3", "d7"}  # "sun" (and "star" only in d7)
    assert next(iter(run["q3"])) == "d7"
    assert all(len(docs) <= 3 for docs in run.values())
    scores = list(run["q3"].values())
    assert scores == sorted(scores, reverse=True)


def test_query_of_stopwords_only_gets_empty_ranking(collection: Collection, tmp_path: Path) -> None:
    collection.queries["q-stop"] = "what is the and of it"
    run = bm25_run(collection, ["q-stop", "q1"], k=5, cache_dir=tmp_path / "cache")
    assert run["q-stop"] == {}
    assert run["q1"]


def test_index_is_cached_on_disk(collection: Collection, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = load_or_build_index(collection, cache_dir=cache)
    assert not first.from_cache
    assert first.path.parent == cache / "bm25"
    assert (first.path / "meta.json").is_file()
    built_at = (first.path / "meta.json").stat().st_mtime_ns

    second = load_or_build_index(collection, cache_dir=cache)
    assert second.from_cache
    assert second.path == first.path
    assert (first.path / "meta.json").stat().st_mtime_ns == built_at
    assert [p.name for p in (cache / "bm25").iterdir()] == [first.path.name]  # no temp folders left
    run = bm25_run(collection, ["q1", "q2"], k=4, cache_dir=cache)
    assert run == bm25_run(collection, ["q1", "q2"], k=4, cache_dir=cache)


def test_cache_key_covers_settings_and_corpus(collection: Collection, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    base = load_or_build_index(collection, cache_dir=cache)
    other = load_or_build_index(collection, BM25Settings(k1=1.2, b=0.75), cache_dir=cache)
    assert not other.from_cache
    assert other.path != base.path
    with collection.corpus_path.open("a") as handle:
        handle.write(json.dumps({"_id": "d9", "title": "", "text": "new document"}) + "\n")
    changed = load_or_build_index(load_collection(collection.root), cache_dir=cache)
    assert not changed.from_cache
    assert changed.path not in (base.path, other.path)


def test_default_cache_dir_from_env(
    collection: Collection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "env-cache"))
    assert default_cache_dir() == tmp_path / "env-cache"
    run = first_stage(collection, "bm25", "test", 2)
    assert set(run) == {"q1", "q2", "q3"}
    assert len(list((tmp_path / "env-cache" / "bm25").iterdir())) == 1
    monkeypatch.delenv(CACHE_ENV)
    assert default_cache_dir() == Path.home() / ".cache" / "matryoshka"


def test_run_file_queries_it_lacks_are_empty_or_omitted(collection: Collection, tmp_path: Path) -> None:
    runs = collection.root / "runs"
    runs.mkdir()
    (runs / "part.trec").write_text("q1 Q0 d1 1 2.0 t\nq1 Q0 d2 2 1.0 t\nq3 Q0 d7 1 5.0 t\n")
    assert first_stage(collection, "runs/part.trec", "test", 10) == {
        "q1": {"d1": 2.0, "d2": 1.0},
        "q2": {},
        "q3": {"d7": 5.0},
    }
    omitted = first_stage(collection, "runs/part.trec", "test", 1, missing="omit")
    assert omitted == {"q1": {"d1": 2.0}, "q3": {"d7": 5.0}}
