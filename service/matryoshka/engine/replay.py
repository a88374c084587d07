"""One job's cached rows: the scores to replay to the exit policy instead of scoring, the
FLOPs earlier requests spent on them, and which rows resumed from a cached state."""

from __future__ import annotations

from collections.abc import Mapping

from matryoshka.engine.job import ScoredLayer


class CacheLedger:
    """Cached scores by row (document index), and what was taken from them."""

    def __init__(self) -> None:
        self.scores: dict[int, Mapping[int, ScoredLayer]] = {}
        self.resumed: dict[int, float] = {}  # row -> FLOPs behind the cached state it resumed from
        self._latest: dict[int, int] = {}  # row -> layer of its latest score, when that was cached

    def add(self, row: int, scores: Mapping[int, ScoredLayer]) -> None:
        """Cached scores for a row (layer -> score)."""
        self.scores[row] = scores

    def has(self, row: int, layer: int) -> bool:
        """Whether the row has a cached score at `layer`."""
        return layer in self.scores.get(row, {})

    def rows_at(self, layer: int) -> list[int]:
        """Rows with a cached score at `layer`."""
        return [r for r, scores in self.scores.items() if layer in scores]

    def resume(self, row: int, layer: int) -> float:
        """Record that the row resumed from its state at `layer`; the FLOPs behind that state."""
        cached = self.scores.get(row, {}).get(layer)
        self.resumed[row] = cached.flops if cached is not None else 0.0
        return self.resumed[row]

    def take_resumed(self) -> dict[int, float]:
        """The resumed rows and the FLOPs behind their states, once (then forgotten)."""
        resumed, self.resumed = self.resumed, {}
        return resumed

    def replay(self, row: int, layer: int) -> ScoredLayer:
        """The row's cached score at `layer`, now its latest score."""
        self._latest[row] = layer
        return self.scores[row][layer]

    def hit(self, row: int, layer: int) -> ScoredLayer | None:
        """The cached score a decision at `layer` rests on, if the row's latest score is one."""
        return self.scores[row][layer] if self._latest.get(row) == layer else None
