"""Per-job state inside one executor call."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from matryoshka.engine.cost import Usage
from matryoshka.engine.exits import ExitSchedule
from matryoshka.engine.job import EngineError, Job, ScoredLayer
from matryoshka.model.state import RowState


@dataclass
class JobRun:
    """One job's share of an executor call: its rows, exit schedule, usage and handed-back states."""

    job: Job
    first: int  # global id of its first row
    count: int
    schedule: ExitSchedule
    query_tokens: int
    usage: Usage = field(default_factory=Usage)
    started: float = field(default_factory=time.perf_counter)
    scored_once: bool = False
    partial: bool = False
    error: EngineError | None = None
    states: dict[int, RowState] = field(default_factory=dict)
    scores: dict[int, dict[int, ScoredLayer]] = field(default_factory=dict)

    @property
    def rows(self) -> range:
        """Its global row ids."""
        return range(self.first, self.first + self.count)

    def scores_at(self, layer: int, head_layers: tuple[int, ...]) -> bool:
        """Score at the depth; earlier only at head layers where this job can act on a score: from
        its first allowed exit on, or everywhere when a budget or deadline may need a partial answer."""
        depth = self.schedule.depth
        if layer == depth:
            return True
        if layer > depth or layer not in head_layers:
            return False
        if self.schedule.budget is not None:  # a budget or a deadline
            return True
        plan = self.job.plan
        policies = [p for p in (plan.confidence, plan.cascade) if p is not None]
        return bool(policies) and layer >= min(p.min_layer for p in policies)
