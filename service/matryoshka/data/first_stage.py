"""First-stage candidates: BM25 top-k with bm25s (index cached on disk) or a TREC run file.

Tokenisation is bm25s' own: lower-cased, regex `(?u)\\b\\w\\w+\\b`, English stopwords removed and NO
stemming (bm25s only stems through PyStemmer, which is not installed). Scoring defaults to Lucene's BM25
with Anserini/Pyserini's k1=0.9, b=0.4.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import bm25s  # type: ignore[import-untyped]
import numpy as np

from matryoshka.data.datasets import Collection, DataError, Run, document_text, read_run, truncate_run

log = logging.getLogger(__name__)

CACHE_ENV = "MATRYOSHKA_CACHE_DIR"
_META = "meta.json"


@dataclass(frozen=True)
class BM25Settings:
    """Tokenisation and scoring settings; all of them are part of the index cache key."""

    k1: float = 0.9
    b: float = 0.4
    method: str = "lucene"
    stopwords: str = "en"
    lower: bool = True
    token_pattern: str = r"(?u)\b\w\w+\b"
    stemmer: None = field(default=None, init=False)  # no stemming: PyStemmer is not installed


@dataclass
class BM25Index:
    """A bm25s retriever over a collection's corpus, with the doc id of every index row."""

    retriever: Any
    doc_ids: list[str]
    path: Path
    from_cache: bool


def default_cache_dir() -> Path:
    """$MATRYOSHKA_CACHE_DIR if set, else ~/.cache/matryoshka."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "matryoshka"


def index_key(corpus_path: Path, settings: BM25Settings) -> str:
    """Hash of the corpus file bytes, the settings and the bm25s version (names the cache folder)."""
    digest = hashlib.sha256()
    with corpus_path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    digest.update(
        json.dumps({"settings": asdict(settings), "bm25s": bm25s.__version__}, sort_keys=True).encode()
    )
    return digest.hexdigest()[:24]


def load_or_build_index(
    collection: Collection, settings: BM25Settings | None = None, cache_dir: Path | None = None
) -> BM25Index:
    """Load the collection's BM25 index from <cache_dir>/bm25/<key>, building and saving it if absent."""
    settings = settings or BM25Settings()
    root = (cache_dir or default_cache_dir()) / "bm25"
    path = root / index_key(collection.corpus_path, settings)
    doc_ids = list(collection.corpus)
    if path.is_dir():
        index = _load(path, doc_ids)
        if index is not None:
            return index
        log.warning("discarding unreadable or stale BM25 index at %s", path)
        shutil.rmtree(path, ignore_errors=True)
    started = time.perf_counter()
    retriever = bm25s.BM25(k1=settings.k1, b=settings.b, method=settings.method)
    texts = [document_text(collection.corpus[doc_id]) for doc_id in doc_ids]
    retriever.index(_tokenize(texts, settings, return_ids=True), show_progress=False)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=root))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
        retriever.save(tmp, show_progress=False)
        meta = {"collection": str(collection.root), "settings": asdict(settings), "doc_ids": doc_ids}
        (tmp / _META).write_text(json.dumps(meta), encoding="utf-8")
        tmp.rename(path)  # atomic; meta.json inside means the folder is complete
    except OSError:
        if not (path / _META).is_file():
            raise
        log.info("another process saved %s first", path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("built BM25 index of %d docs in %.1fs at %s", len(doc_ids), time.perf_counter() - started, path)
    return BM25Index(retriever=retriever, doc_ids=doc_ids, path=path, from_cache=False)


def bm25_run(
    collection: Collection,
    query_ids: list[str],
    k: int,
    *,
    settings: BM25Settings | None = None,
    cache_dir: Path | None = None,
) -> Run:
    """BM25 top-`k` per query as {qid: {doc_id: score}}; every query gets an entry, possibly empty.

    Only documents sharing a term with the query (score > 0) are returned; ties are cut in trec_eval
    order (doc id descending) so the kept top-k is the one the metrics see.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    settings = settings or BM25Settings()
    unknown = [qid for qid in query_ids if qid not in collection.queries]
    if unknown:
        raise DataError(f"{collection.root / 'queries.jsonl'}: no query with id {unknown[0]!r}")
    index = load_or_build_index(collection, settings, cache_dir)
    retriever = index.retriever
    doc_ids = np.asarray(index.doc_ids)
    id_rank = np.empty(len(doc_ids), dtype=np.int64)
    id_rank[np.argsort(doc_ids, kind="stable")] = np.arange(len(doc_ids))
    tokens = _tokenize([collection.queries[qid] for qid in query_ids], settings)
    run: Run = {}
    for qid, query_tokens in zip(query_ids, tokens, strict=True):
        known = [tok for tok in query_tokens if tok and tok in retriever.vocab_dict]
        if not known:
            run[qid] = {}
            continue
        scores = np.asarray(retriever.get_scores(known), dtype=np.float64)
        hits = np.flatnonzero(scores > 0)
        top = hits[np.lexsort((-id_rank[hits], -scores[hits]))[:k]]
        run[qid] = {str(doc_ids[i]): float(scores[i]) for i in top}
    return run


def first_stage(
    collection: Collection,
    spec: str,
    split: str,
    k: int,
    *,
    settings: BM25Settings | None = None,
    cache_dir: Path | None = None,
    missing: Literal["empty", "omit"] = "empty",
) -> Run:
    """Top-`k` candidates for every query judged in `split`: BM25 for spec "bm25", else a TREC run file.

    A relative run path that does not exist as given is looked up under the collection folder (e.g.
    "runs/bm25.top100.trec"). Queries the run file lacks get an empty candidate list, or with
    `missing="omit"` no entry (trec_eval then leaves them out of the means). BM25 answers every query.
    """
    query_ids = collection.query_ids(split)
    if spec == "bm25":
        return bm25_run(collection, query_ids, k, settings=settings, cache_dir=cache_dir)
    path = Path(spec).expanduser()
    if not path.is_absolute() and not path.exists() and (collection.root / path).exists():
        path = collection.root / path
    run = read_run(path, collection)
    if missing == "omit":
        query_ids = [qid for qid in query_ids if qid in run]
    return truncate_run({qid: run.get(qid, {}) for qid in query_ids}, k)


def _load(path: Path, doc_ids: list[str]) -> BM25Index | None:
    """Load a saved index, or None if it is incomplete or was built over other documents."""
    try:
        meta = json.loads((path / _META).read_text(encoding="utf-8"))
        if meta.get("doc_ids") != doc_ids:
            return None
        started = time.perf_counter()
        retriever = bm25s.BM25.load(path, load_corpus=False, show_progress=False)
    except (OSError, ValueError, KeyError) as exc:
        log.warning("cannot load BM25 index at %s: %s", path, exc)
        return None
    log.info("loaded BM25 index from %s in %.2fs", path, time.perf_counter() - started)
    return BM25Index(retriever=retriever, doc_ids=doc_ids, path=path, from_cache=True)


def _tokenize(texts: list[str], settings: BM25Settings, *, return_ids: bool = False) -> Any:
    """bm25s.tokenize with these settings (token strings per text, or ids + vocab for indexing)."""
    return bm25s.tokenize(
        texts,
        lower=settings.lower,
        token_pattern=settings.token_pattern,
        stopwords=settings.stopwords,
        stemmer=None,
        return_ids=return_ids,
        show_progress=False,
    )
