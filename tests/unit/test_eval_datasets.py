"""BEIR-format loading, TREC runs and the errors malformed inputs raise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from matryoshka.data.datasets import (
    Collection,
    DataError,
    Document,
    UnknownDocs,
    check_run,
    document_text,
    load_collection,
    read_run,
    truncate_run,
    write_run,
)
from matryoshka.data.first_stage import first_stage

DOCS = [{"_id": f"d{i}", "title": f"title {i}", "text": f"text {i}"} for i in range(1, 8)]
DOCS.append({"_id": "d8", "text": "untitled text"})
QUERIES = [{"_id": f"q{i}", "text": f"query {i}"} for i in range(1, 4)]
QRELS = "query-id\tcorpus-id\tscore\nq1\td1\t3\nq1\td2\t2\nq1\td3\t0\nq2\td5\t1\nq3\td7\t2\n"


def write_fixture(root: Path) -> Path:
    """A BEIR-format folder: 8 docs (one untitled), 3 queries, graded qrels/test.tsv."""
    root.mkdir(parents=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in QUERIES))
    (root / "qrels").mkdir()
    (root / "qrels" / "test.tsv").write_text(QRELS)
    return root


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """Path of a fresh fixture collection."""
    return write_fixture(tmp_path / "tiny")


@pytest.fixture
def collection(root: Path) -> Collection:
    """The fixture collection, loaded."""
    return load_collection(root)


def test_load_collection(collection: Collection) -> None:
    assert len(collection.corpus) == 8
    assert collection.corpus["d1"] == Document(title="title 1", text="text 1")
    assert collection.corpus["d8"] == Document(title="", text="untitled text")
    assert collection.queries == {"q1": "query 1", "q2": "query 2", "q3": "query 3"}
    assert collection.name == "tiny"
    assert collection.splits() == ["test"]
    assert collection.qrels("test") == {"q1": {"d1": 3, "d2": 2, "d3": 0}, "q2": {"d5": 1}, "q3": {"d7": 2}}
    assert collection.query_ids("test") == ["q1", "q2", "q3"]


def test_document_text() -> None:
    assert document_text(Document(title="Paris", text="capital of France")) == "Paris capital of France"
    assert document_text(Document(title="", text="capital of France")) == "capital of France"
    assert document_text(Document(title="Only a title", text="")) == "Only a title"


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="collection folder not found") as err:
        load_collection(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(err.value)


def test_missing_corpus_file(root: Path) -> None:
    (root / "corpus.jsonl").unlink()
    with pytest.raises(DataError, match=r"missing corpus file") as err:
        load_collection(root)
    assert str(root / "corpus.jsonl") in str(err.value)


def test_missing_split_lists_available(collection: Collection) -> None:
    with pytest.raises(DataError, match=r"split 'dev' not found \(available splits: test\)"):
        collection.qrels("dev")


def test_bad_json_names_line_2(root: Path) -> None:
    lines = (root / "corpus.jsonl").read_text().splitlines()
    lines[1] = '{"_id": "d2", "text": '
    (root / "corpus.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"corpus\.jsonl, line 2: malformed JSON"):
        load_collection(root)


def test_missing_id_names_line(root: Path) -> None:
    (root / "queries.jsonl").write_text('{"_id": "q1", "text": "a"}\n\n{"text": "no id"}\n')
    with pytest.raises(DataError, match=r"queries\.jsonl, line 3: missing '_id'"):
        load_collection(root)


def test_duplicate_id(root: Path) -> None:
    (root / "queries.jsonl").write_text('{"_id": "q1", "text": "a"}\n{"_id": "q1", "text": "b"}\n')
    with pytest.raises(DataError, match=r"line 2: duplicate _id 'q1', first at line 1"):
        load_collection(root)


def test_qrels_with_two_columns(root: Path) -> None:
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\n")
    with pytest.raises(DataError, match=r"test\.tsv, line 3: expected 3 tab-separated columns .* got 2"):
        load_collection(root).qrels("test")


def test_qrels_needs_header(root: Path) -> None:
    (root / "qrels" / "test.tsv").write_text("q1\td1\t1\n")
    with pytest.raises(DataError, match=r"line 1: expected the header"):
        load_collection(root).qrels("test")


def test_qrels_non_integer_grade(root: Path) -> None:
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\thigh\n")
    with pytest.raises(DataError, match=r"line 2: score 'high' is not an integer grade"):
        load_collection(root).qrels("test")


def test_qrels_unknown_doc_id(root: Path) -> None:
    (root / "qrels" / "test.tsv").write_text(QRELS + "q2\td99\t1\n")
    collection = load_collection(root)
    with pytest.raises(DataError, match=r"test\.tsv, line 7: corpus id 'd99' is not in .*corpus\.jsonl"):
        collection.qrels("test")
    # re-ranking subsets (TREC DL) keep judgments of documents without text
    assert collection.qrels("test", unknown_docs="keep")["q2"] == {"d5": 1, "d99": 1}


def test_qrels_unknown_query_id(root: Path) -> None:
    (root / "qrels" / "test.tsv").write_text(QRELS + "q9\td1\t1\n")
    collection = load_collection(root)
    modes: tuple[UnknownDocs, ...] = ("error", "keep")
    for mode in modes:
        with pytest.raises(DataError, match=r"line 7: query id 'q9' is not in .*queries\.jsonl"):
            collection.qrels("test", unknown_docs=mode)


def test_run_round_trip(tmp_path: Path, collection: Collection) -> None:
    run = {"q1": {"d2": 0.25, "d1": 1.5, "d3": 0.25}, "q2": {"d5": -1.0}}
    path = tmp_path / "out" / "run.trec"
    write_run(run, path, tag="bm25")
    lines = path.read_text().splitlines()
    # trec_eval order: score descending, ties by doc id descending
    assert lines[:3] == ["q1 Q0 d1 1 1.5 bm25", "q1 Q0 d3 2 0.25 bm25", "q1 Q0 d2 3 0.25 bm25"]
    assert read_run(path) == run
    assert read_run(path, collection) == run
    assert truncate_run(run, 2) == {"q1": {"d1": 1.5, "d3": 0.25}, "q2": {"d5": -1.0}}


def test_run_non_numeric_score(tmp_path: Path) -> None:
    path = tmp_path / "bad.trec"
    path.write_text("q1 Q0 d1 1 2.5 tag\nq1 Q0 d2 2 high tag\n")
    with pytest.raises(DataError, match=r"bad\.trec, line 2: score 'high' is not a number"):
        read_run(path)


def test_run_wrong_column_count(tmp_path: Path) -> None:
    path = tmp_path / "bad.trec"
    path.write_text("q1 Q0 d1 1 2.5\n")
    with pytest.raises(DataError, match=r"line 1: expected 6 whitespace-separated columns .* got 5"):
        read_run(path)


def test_run_duplicate_doc(tmp_path: Path) -> None:
    path = tmp_path / "bad.trec"
    path.write_text("q1 Q0 d1 1 2.5 t\nq1 Q0 d1 2 1.5 t\n")
    with pytest.raises(DataError, match=r"line 2: doc id 'd1' appears twice for query 'q1'"):
        read_run(path)


def test_missing_run_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"missing TREC run file") as err:
        read_run(tmp_path / "none.trec")
    assert str(tmp_path / "none.trec") in str(err.value)


def test_run_checked_against_collection(tmp_path: Path, collection: Collection) -> None:
    path = tmp_path / "run.trec"
    path.write_text("q1 Q0 d1 1 2.5 t\nq1 Q0 d42 2 1.5 t\n")
    with pytest.raises(DataError, match=r"run\.trec, line 2: doc id 'd42' is not in"):
        read_run(path, collection)
    with pytest.raises(DataError, match=r"myrun: 1 doc id\(s\) for query 'q1' .* \(first: 'd42'\)"):
        check_run(read_run(path), collection, source="myrun")
    with pytest.raises(DataError, match=r"query id 'q7' is not in"):
        check_run({"q7": {"d1": 1.0}}, collection)
    check_run({"q1": {"d1": 1.0}}, collection)


def test_first_stage_from_run_file(root: Path, collection: Collection) -> None:
    (root / "runs").mkdir()
    write_run({"q1": {"d1": 3.0, "d2": 2.0, "d3": 1.0}, "q2": {"d5": 1.0}}, root / "runs" / "x.trec", "x")
    run = first_stage(collection, "runs/x.trec", "test", 2)  # relative to the collection folder
    assert run == {"q1": {"d1": 3.0, "d2": 2.0}, "q2": {"d5": 1.0}, "q3": {}}
    assert first_stage(collection, str(root / "runs" / "x.trec"), "test", 1)["q1"] == {"d1": 3.0}
