"""BEIR-format collections and TREC runs: strict loading with errors that name the file and line.

A collection folder holds `corpus.jsonl` ({"_id","title","text"}), `queries.jsonl` ({"_id","text"}),
`qrels/<split>.tsv` (header `query-id corpus-id score`, tab-separated, integer grades) and optionally
`runs/*.trec` (`qid Q0 docid rank score tag`). Rankings are always derived from scores in trec_eval's
order (score descending, ties broken by doc id descending); the rank column of a run file is ignored.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Qrels = dict[str, dict[str, int]]
Run = dict[str, dict[str, float]]
UnknownDocs = Literal["error", "keep"]

QRELS_HEADER = ("query-id", "corpus-id", "score")
_COLLECTION_LAYOUT = "a BEIR-format folder with corpus.jsonl, queries.jsonl and qrels/<split>.tsv"


class DataError(ValueError):
    """Missing or malformed evaluation data; the message names the file (and line) at fault."""


@dataclass(frozen=True, slots=True)
class Document:
    """One corpus entry."""

    title: str
    text: str


def document_text(doc: Document) -> str:
    """The text a re-ranker (and BM25) sees: `title + " " + text` when a title is present."""
    title = doc.title.strip()
    if not title:
        return doc.text
    return f"{title} {doc.text}" if doc.text else title


@dataclass
class Collection:
    """A loaded BEIR-format collection; qrels are read per split on demand."""

    root: Path
    corpus: dict[str, Document]
    queries: dict[str, str]

    @property
    def name(self) -> str:
        """The collection's folder name (e.g. "scifact")."""
        return self.root.name

    @property
    def corpus_path(self) -> Path:
        """Path of the corpus file the documents were read from."""
        return self.root / "corpus.jsonl"

    def splits(self) -> list[str]:
        """Names of the qrels splits present under qrels/ (sorted)."""
        qrels_dir = self.root / "qrels"
        return sorted(p.stem for p in qrels_dir.glob("*.tsv")) if qrels_dir.is_dir() else []

    def qrels(self, split: str, *, unknown_docs: UnknownDocs = "error") -> Qrels:
        """Read qrels/<split>.tsv as {query_id: {doc_id: grade}}, validated against this collection.

        A query id missing from queries.jsonl is always an error. A doc id missing from the corpus is an
        error unless `unknown_docs="keep"`: use that for re-ranking subsets such as TREC DL, whose corpus
        only holds retrieved passages; the judgments must be kept so that the ideal DCG stays correct.
        """
        path = self.root / "qrels" / f"{split}.tsv"
        if not path.is_file():
            available = ", ".join(self.splits()) or "none"
            raise DataError(
                f"{path}: qrels file for split {split!r} not found (available splits: {available})"
            )
        return _read_qrels(path, self, unknown_docs)

    def query_ids(self, split: str) -> list[str]:
        """Ids of the queries judged in `split`, in queries.jsonl order."""
        judged = self.qrels(split, unknown_docs="keep")
        return [qid for qid in self.queries if qid in judged]


def load_collection(path: str | os.PathLike[str]) -> Collection:
    """Load corpus.jsonl and queries.jsonl of a BEIR-format folder (qrels are read per split)."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: collection folder not found (expected {_COLLECTION_LAYOUT})")
    corpus_path = _require_file(root / "corpus.jsonl", "corpus file (JSON lines of {_id, title, text})")
    queries_path = _require_file(root / "queries.jsonl", "queries file (JSON lines of {_id, text})")
    corpus = {
        doc_id: Document(
            title=_optional_str(obj, "title", corpus_path, n), text=_str(obj, "text", corpus_path, n)
        )
        for n, doc_id, obj in _read_jsonl(corpus_path)
    }
    queries = {qid: _str(obj, "text", queries_path, n) for n, qid, obj in _read_jsonl(queries_path)}
    if not corpus:
        raise DataError(f"{corpus_path}: corpus is empty")
    return Collection(root=root, corpus=corpus, queries=queries)


def read_run(path: str | os.PathLike[str], collection: Collection | None = None) -> Run:
    """Read a TREC run (`qid Q0 docid rank score tag`) as {qid: {docid: score}}.

    With `collection`, every query id and doc id must exist in it (errors name the line).
    """
    run_path = _require_file(Path(path), "TREC run file (qid Q0 docid rank score tag)")
    run: Run = {}
    for n, line in _lines(run_path):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 6:
            raise _line_error(
                run_path,
                n,
                f"expected 6 whitespace-separated columns (qid Q0 docid rank score tag), got {len(fields)}",
            )
        qid, _, doc_id, rank, score_text, _ = fields
        try:
            int(rank)
        except ValueError:
            raise _line_error(run_path, n, f"rank {rank!r} is not an integer") from None
        try:
            score = float(score_text)
        except ValueError:
            raise _line_error(run_path, n, f"score {score_text!r} is not a number") from None
        if not math.isfinite(score):
            raise _line_error(run_path, n, f"score {score_text!r} is not finite")
        if collection is not None:
            if qid not in collection.queries:
                raise _line_error(
                    run_path, n, f"query id {qid!r} is not in {collection.root / 'queries.jsonl'}"
                )
            if doc_id not in collection.corpus:
                raise _line_error(run_path, n, f"doc id {doc_id!r} is not in {collection.corpus_path}")
        ranking = run.setdefault(qid, {})
        if doc_id in ranking:
            raise _line_error(run_path, n, f"doc id {doc_id!r} appears twice for query {qid!r}")
        ranking[doc_id] = score
    return run


def check_run(run: Mapping[str, Mapping[str, float]], collection: Collection, *, source: str = "run") -> None:
    """Raise DataError if `run` names a query or document that `collection` does not hold."""
    for qid, ranking in run.items():
        if qid not in collection.queries:
            raise DataError(f"{source}: query id {qid!r} is not in {collection.root / 'queries.jsonl'}")
        unknown = [doc_id for doc_id in ranking if doc_id not in collection.corpus]
        if unknown:
            raise DataError(
                f"{source}: {len(unknown)} doc id(s) for query {qid!r} are not in {collection.corpus_path} "
                f"(first: {unknown[0]!r})"
            )


def rank_documents(scores: Mapping[str, float]) -> list[tuple[str, float]]:
    """(doc_id, score) pairs best first, in trec_eval's order: score descending, then doc id descending."""
    return sorted(scores.items(), key=lambda item: (item[1], item[0]), reverse=True)


def truncate_run(run: Mapping[str, Mapping[str, float]], k: int) -> Run:
    """The top-`k` documents of every query (trec_eval order); queries keep their order."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return {qid: dict(rank_documents(ranking)[:k]) for qid, ranking in run.items()}


def write_run(run: Mapping[str, Mapping[str, float]], path: str | os.PathLike[str], tag: str) -> None:
    """Write `run` in TREC format, ranks 1.. in trec_eval order and scores at full precision."""
    if not tag or any(ch.isspace() for ch in tag):
        raise ValueError(f"run tag must be non-empty without whitespace, got {tag!r}")
    lines: list[str] = []
    for qid, ranking in run.items():
        for rank, (doc_id, score) in enumerate(rank_documents(ranking), start=1):
            for name, value in (("query id", qid), ("doc id", doc_id)):
                if not value or any(ch.isspace() for ch in value):
                    raise ValueError(f"{name} {value!r} cannot be written to a TREC run")
            if not math.isfinite(score):
                raise ValueError(f"score {score!r} of ({qid!r}, {doc_id!r}) is not finite")
            lines.append(f"{qid} Q0 {doc_id} {rank} {float(score)!r} {tag}\n")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text("".join(lines), encoding="utf-8")
    tmp.replace(out)


def _read_qrels(path: Path, collection: Collection, unknown_docs: UnknownDocs) -> Qrels:
    """Parse and validate one qrels file."""
    qrels: Qrels = {}
    first_seen: dict[tuple[str, str], int] = {}
    header_seen = False
    for n, line in _lines(path):
        if not line.strip():
            continue
        columns = line.split("\t")
        if not header_seen:
            if tuple(c.strip() for c in columns) != QRELS_HEADER:
                raise _line_error(
                    path, n, f"expected the header {'<TAB>'.join(QRELS_HEADER)!r}, got {line!r}"
                )
            header_seen = True
            continue
        if len(columns) != 3:
            raise _line_error(
                path,
                n,
                f"expected 3 tab-separated columns (query-id, corpus-id, score), "
                f"got {len(columns)}: {line!r}",
            )
        qid, doc_id, grade_text = (c.strip() for c in columns)
        if not qid or not doc_id:
            raise _line_error(path, n, "empty query id or corpus id")
        try:
            grade = int(grade_text)
        except ValueError:
            raise _line_error(path, n, f"score {grade_text!r} is not an integer grade") from None
        if qid not in collection.queries:
            raise _line_error(path, n, f"query id {qid!r} is not in {collection.root / 'queries.jsonl'}")
        if unknown_docs == "error" and doc_id not in collection.corpus:
            raise _line_error(
                path,
                n,
                f"corpus id {doc_id!r} is not in {collection.corpus_path} "
                "(pass unknown_docs='keep' for a collection whose corpus is a re-ranking subset)",
            )
        if (qid, doc_id) in first_seen:
            raise _line_error(
                path,
                n,
                f"duplicate judgment for ({qid!r}, {doc_id!r}), first at line {first_seen[qid, doc_id]}",
            )
        first_seen[qid, doc_id] = n
        qrels.setdefault(qid, {})[doc_id] = grade
    if not header_seen:
        raise DataError(f"{path}: empty qrels file (expected the header {'<TAB>'.join(QRELS_HEADER)!r})")
    return qrels


def _read_jsonl(path: Path) -> Iterator[tuple[int, str, dict[str, object]]]:
    """Yield (line number, _id, object) for every non-blank line; ids must be unique non-empty strings."""
    seen: dict[str, int] = {}
    for n, line in _lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise _line_error(path, n, f"malformed JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise _line_error(path, n, f"expected a JSON object, got {type(obj).__name__}")
        if "_id" not in obj:
            raise _line_error(path, n, "missing '_id'")
        item_id = obj["_id"]
        if not isinstance(item_id, str) or not item_id.strip():
            raise _line_error(path, n, f"'_id' must be a non-empty string, got {item_id!r}")
        if item_id in seen:
            raise _line_error(path, n, f"duplicate _id {item_id!r}, first at line {seen[item_id]}")
        seen[item_id] = n
        yield n, item_id, obj


def _str(obj: Mapping[str, object], key: str, path: Path, n: int) -> str:
    """A required string field of a JSON line."""
    if key not in obj:
        raise _line_error(path, n, f"missing {key!r}")
    value = obj[key]
    if not isinstance(value, str):
        raise _line_error(path, n, f"{key!r} must be a string, got {type(value).__name__}")
    return value


def _optional_str(obj: Mapping[str, object], key: str, path: Path, n: int) -> str:
    """An optional string field of a JSON line ("" when absent or null)."""
    return "" if obj.get(key) is None else _str(obj, key, path, n)


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, line without its line ending), decoding UTF-8 line by line."""
    with path.open("rb") as handle:
        for n, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _line_error(path, n, f"not valid UTF-8 ({exc.reason})") from None
            if n == 1:
                line = line.removeprefix("\ufeff")
            yield n, line.rstrip("\r\n")


def _require_file(path: Path, what: str) -> Path:
    """Return `path` if it is a file, else raise DataError naming it and what was expected."""
    if not path.is_file():
        raise DataError(f"{path}: missing {what}")
    return path


def _line_error(path: Path, n: int, problem: str) -> DataError:
    """A DataError for line `n` of `path`."""
    return DataError(f"{path}, line {n}: {problem}")
