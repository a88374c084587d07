"""One request's cache traffic, planned without I/O so the sync and async caches share it.

Lookup in two steps: fetch every candidate layer's small scores entry (1..depth per pair), pick
each pair's deepest usable one, then fetch the hidden state only where the pair must run deeper
(an entry at the depth answers with no state at all). Write-back: each row the run handed back
becomes a scores entry and a state entry at its exit layer.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import torch

from matryoshka.cache.codec import CodecError, decode_row, decode_scores, encode_row, encode_scores
from matryoshka.cache.keys import KeySpace, PairKeys
from matryoshka.engine.job import JobResult, ScoredLayer
from matryoshka.engine.plan import Plan
from matryoshka.engine.state_cache import CachedRows, usable
from matryoshka.model.prompt import EncodedPair

log = logging.getLogger("matryoshka.cache")


class Lookup:
    """Keys to fetch for one request, and what the fetched bytes mean."""

    def __init__(self, space: KeySpace, pairs: Sequence[EncodedPair], plan: Plan) -> None:
        if plan.depth is None:
            raise ValueError("the cache needs a resolved plan")
        self.plan = plan
        self.depth = plan.depth
        self.head_layers = space.head_layers
        self.pair_keys = [space.pair(p) for p in pairs]
        self.layers = list(range(self.depth, 0, -1))  # deepest first
        self.chosen: dict[int, tuple[int, dict[int, ScoredLayer]]] = {}
        self.pending_states: list[tuple[int, str]] = []

    def score_keys(self) -> list[str]:
        """Step 1: every pair's scores entry at every layer up to the depth."""
        return [k.key(self.plan.width, layer, "s") for k in self.pair_keys for layer in self.layers]

    def choose(self, blobs: Sequence[bytes | None]) -> list[str]:
        """Pick each pair's deepest usable entry; returns the state keys step 2 must fetch."""
        per_pair = len(self.layers)
        for i, keys in enumerate(self.pair_keys):
            for j, layer in enumerate(self.layers):
                scores = _scores(blobs[i * per_pair + j], layer)
                if scores is not None and usable(scores, layer, self.plan, self.head_layers):
                    self.chosen[i] = (layer, scores)
                    if layer < self.depth:
                        self.pending_states.append((i, keys.key(self.plan.width, layer, "h")))
                    break
        return [key for _, key in self.pending_states]

    def finish(self, blobs: Sequence[bytes | None]) -> CachedRows:
        """Step 2: the cached rows; a pair whose state is missing or corrupt runs fresh."""
        found = CachedRows()
        states = dict(zip((i for i, _ in self.pending_states), blobs, strict=True))
        for i, (layer, scores) in self.chosen.items():
            if layer < self.depth:
                blob = states.get(i)
                if blob is None:
                    continue
                try:
                    state = decode_row(blob)
                except CodecError as exc:
                    log.warning("ignoring a corrupt cached state (it will be overwritten): %s", exc)
                    continue
                if state.layer != layer:
                    continue
                found.states[i] = state
            found.scores[i] = scores
        return found


def _scores(blob: bytes | None, layer: int) -> dict[int, ScoredLayer] | None:
    if blob is None:
        return None
    try:
        at, scores = decode_scores(blob)
    except CodecError as exc:
        log.warning("ignoring a corrupt cached scores entry (it will be overwritten): %s", exc)
        return None
    return scores if at == layer else None


def entries(
    space: KeySpace,
    pairs: Sequence[EncodedPair],
    plan: Plan,
    result: JobResult,
    state_dtype: torch.dtype | None,
    max_entry_bytes: int,
) -> list[tuple[str, bytes]]:
    """Key/value pairs to write for the rows a run handed back (states over the size cap are skipped)."""
    out: list[tuple[str, bytes]] = []
    for i, state in result.states.items():
        keys: PairKeys = space.pair(pairs[i])
        scores: Mapping[int, ScoredLayer] = result.scores.get(i, {})
        if state.layer not in scores:
            continue
        blob = encode_row(state, state_dtype)
        if len(blob) > max_entry_bytes:
            continue
        out.append((keys.key(plan.width, state.layer, "h"), blob))
        out.append((keys.key(plan.width, state.layer, "s"), encode_scores(state.layer, scores)))
    return out
