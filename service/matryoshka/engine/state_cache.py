"""What the engine asks of a layer-state cache (implemented in matryoshka.cache): per document, the
deepest usable cached layer up to a plan's depth, and the write-back of what a run computed.

A cached entry holds a row's scores at the layers it was scored at and its state at its last layer.
An entry at layer L is usable for a plan when it covers every layer below L where the plan's exit
policies act, so replaying the cached scores decides exactly as a fresh run would.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from matryoshka.engine.job import JobResult, ScoredLayer
from matryoshka.engine.plan import Plan
from matryoshka.model.prompt import EncodedPair
from matryoshka.model.state import RowState


@dataclass
class CachedRows:
    """A lookup's answer by document index: cached scores, and the state to resume below the depth."""

    scores: dict[int, Mapping[int, ScoredLayer]] = field(default_factory=dict)
    states: dict[int, RowState] = field(default_factory=dict)


class StateCache(Protocol):
    """A cache bound to one model (its fingerprint, dtype and head layers): synchronous form."""

    def lookup(self, pairs: Sequence[EncodedPair], plan: Plan) -> CachedRows:
        """The deepest usable cached layer per pair, up to the plan's depth."""
        ...

    def write_back(self, pairs: Sequence[EncodedPair], plan: Plan, result: JobResult) -> None:
        """Store the states and scores a run handed back (`Job.keep_states`)."""
        ...


def policy_layers(plan: Plan, head_layers: Sequence[int]) -> set[int]:
    """Head layers up to the depth where the plan's confidence or cascade exit may fire."""
    policies = [p for p in (plan.confidence, plan.cascade) if p is not None]
    if not policies or plan.depth is None:
        return set()
    first = min(p.min_layer for p in policies)
    return {h for h in head_layers if first <= h <= plan.depth}


def usable(scores: Mapping[int, ScoredLayer], layer: int, plan: Plan, head_layers: Sequence[int]) -> bool:
    """Whether an entry at `layer` with these scores answers or resumes `plan` like a fresh run."""
    needed = {h for h in policy_layers(plan, head_layers) if h <= layer}
    return layer in scores and needed <= scores.keys()
