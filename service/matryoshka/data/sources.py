"""Where training data comes from (`DIR:SPLIT` specs) and the guard that keeps benchmarks out of it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from matryoshka.data.datasets import Collection, DataError

BENCHMARK_COLLECTIONS = frozenset({"trec-dl-2019"})


@dataclass(frozen=True)
class DataSource:
    """A BEIR-format collection folder and the qrels split to draw groups from."""

    path: Path
    split: str

    @staticmethod
    def parse(spec: str) -> DataSource:
        """ "DIR:SPLIT" (e.g. "../shared/data/scifact:train")."""
        path, sep, split = spec.rpartition(":")
        if not sep or not path or not split:
            raise ValueError(f"data source {spec!r} is not DIR:SPLIT")
        return DataSource(Path(path), split)


def refuse_benchmark(collection: Collection) -> None:
    """Raise if `collection` is a benchmark that must never be trained on."""
    if collection.name in BENCHMARK_COLLECTIONS:
        raise DataError(
            f"{collection.root}: {collection.name} is the evaluation benchmark; training on its queries "
            "or passages would leak the test set (use scifact train or nfcorpus-dev)"
        )
