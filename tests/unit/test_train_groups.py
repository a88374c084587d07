"""Training groups: judged positives first, BM25 negatives that are never judged positives, seeded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from matryoshka.data.datasets import DataError, load_collection
from matryoshka.train.groups import (
    GroupSpec,
    attach_teacher,
    build_groups,
    load_groups,
    save_groups,
    split_groups,
)

DOCS = {
    "d1": "the cat sat on the mat",
    "d2": "the cat ran to the park",
    "d3": "a cat and a dog",
    "d4": "the dog sat in the sun",
    "d5": "the sun is a hot star",
    "d6": "a hot sun and a blue sky",
    "d7": "the cat is hot",
}
QUERIES = {"q1": "cat sat", "q2": "hot sun", "q3": "blue river"}
QRELS = [("q1", "d1", 2), ("q1", "d2", 1), ("q1", "d3", 0), ("q2", "d5", 2), ("q2", "d6", 2), ("q3", "d6", 1)]


@pytest.fixture
def train_collection(tmp_path: Path) -> Path:
    """Docs that share words, so BM25 finds hard negatives; q3's only positive has grade 1."""
    root = tmp_path / "tiny-train"
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": d, "text": t}) + "\n" for d, t in DOCS.items())
    )
    (root / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in QUERIES.items())
    )
    rows = "".join(f"{q}\t{d}\t{g}\n" for q, d, g in QRELS)
    (root / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n" + rows)
    return root


def test_groups_have_the_positive_first_and_never_a_relevant_negative(train_collection: Path) -> None:
    collection = load_collection(train_collection)
    groups = build_groups(collection, "train", GroupSpec(negatives=2, num_candidates=8, min_grade=2))
    assert [g.query_id for g in groups] == ["q1", "q2"]  # q3 has no grade-2 positive
    q1, q2 = groups
    assert q1.candidates[0].doc_id == "d1"
    assert q2.candidates[0].doc_id in {"d5", "d6"}
    assert "d2" not in {c.doc_id for c in q1.candidates}  # grade 1: relevant, never a negative
    assert {c.doc_id for c in q2.candidates[1:]}.isdisjoint({"d5", "d6"})
    assert len(q1.candidates) == 3
    assert len(q2.candidates) == 3
    assert [c.label for c in q1.candidates] == [1, 0, 0]
    assert groups == build_groups(collection, "train", GroupSpec(negatives=2, num_candidates=8, min_grade=2))


def test_passage_cuts_keep_a_seeded_prefix_of_at_least_min_words(train_collection: Path) -> None:
    collection = load_collection(train_collection)
    plain = build_groups(collection, "train", GroupSpec(negatives=3, num_candidates=8))
    cut = build_groups(collection, "train", GroupSpec(negatives=3, num_candidates=8, cut_min_words=2))
    assert cut == build_groups(collection, "train", GroupSpec(negatives=3, num_candidates=8, cut_min_words=2))
    pairs = [
        (a, b)
        for ga, gb in zip(plain, cut, strict=True)
        for a, b in zip(ga.candidates, gb.candidates, strict=True)
    ]
    assert all(a.doc_id == b.doc_id and a.label == b.label for a, b in pairs)  # same sampling
    assert all(a.text.startswith(b.text) and len(b.text.split()) >= 2 for a, b in pairs)
    assert any(len(b.text.split()) < len(a.text.split()) for a, b in pairs)
    with pytest.raises(ValueError, match="cut_min_words"):
        build_groups(collection, "train", GroupSpec(cut_min_words=-1))


def test_groups_round_trip_through_jsonl_and_split_by_query(train_collection: Path, tmp_path: Path) -> None:
    groups = build_groups(
        load_collection(train_collection), "train", GroupSpec(negatives=2, num_candidates=8)
    )
    sha = save_groups(groups, tmp_path / "groups.jsonl")
    assert len(sha) == 64
    assert load_groups(tmp_path / "groups.jsonl") == groups
    train, dev = split_groups(groups, 0.5, seed=1)
    assert len(dev) == 1
    assert len(train) == len(groups) - 1
    assert {g.query_id for g in train} | {g.query_id for g in dev} == {g.query_id for g in groups}


def test_teacher_scores_attach_and_missing_ones_are_named(train_collection: Path) -> None:
    groups = build_groups(
        load_collection(train_collection), "train", GroupSpec(negatives=1, num_candidates=8)
    )
    run = {g.query_id: {c.doc_id: float(i) for i, c in enumerate(g.candidates)} for g in groups}
    assert all(g.has_teacher for g in attach_teacher(groups, run, source="t.trec"))
    del run["q1"][groups[0].candidates[0].doc_id]
    with pytest.raises(DataError, match=r"t\.trec: no teacher score for query 'q1'"):
        attach_teacher(groups, run, source="t.trec")


def test_the_benchmark_is_never_training_data(train_collection: Path) -> None:
    renamed = train_collection.rename(train_collection.parent / "trec-dl-2019")
    with pytest.raises(DataError, match="evaluation benchmark"):
        build_groups(load_collection(renamed), "train", GroupSpec())


def test_malformed_group_files_name_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "g.jsonl"
    bad.write_text('{"query_id": "q", "query": "x", "candidates": []}\n{oops\n')
    with pytest.raises(DataError, match=r"g.jsonl:1"):
        load_groups(bad)
