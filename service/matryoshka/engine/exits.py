"""Exit policies: at a scored layer, decide which candidates of one request stop, and why.

Each policy sees the request's candidates as vectors: the latest calibrated probability of every
candidate (NaN before its first score; exited candidates keep their final one) and which are still
active. Policies apply in order (depth, confidence, cascade); the budget guard is asked separately
because it needs the cost model's prediction of the next step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

import torch
from torch import Tensor

from matryoshka.engine.plan import Budget, CascadeExit, ConfidenceExit, Plan


class ExitReason(StrEnum):
    """Why a candidate stopped where it did."""

    DEPTH = "depth"  # reached the plan's depth
    CONFIDENT_RELEVANT = "confident_relevant"
    CONFIDENT_IRRELEVANT = "confident_irrelevant"
    CASCADE = "cascade"  # could no longer reach the top-n
    STABLE = "stable"  # the top-n set stopped changing
    BUDGET = "budget"  # the next step would not fit the time or FLOP budget
    CACHE_HIT = "cache_hit"  # the exit policy was met by a cached score: no compute


Decisions = dict[int, ExitReason]
# lift -> each candidate's ranking key were its probability `lift` higher (engine/fusion.fused_standing)
Standing = Callable[[float], Tensor]


class FixedDepth:
    """Everyone still running exits at the plan's depth."""

    def __init__(self, depth: int) -> None:
        self.depth = depth

    def decide(self, layer: int, probs: Tensor, active: Tensor) -> Decisions:
        """All active candidates at or past the depth exit with DEPTH."""
        if layer < self.depth:
            return {}
        return {int(i): ExitReason.DEPTH for i in active.nonzero().flatten()}


class ConfidencePolicy:
    """Asymmetric per-candidate thresholds on calibrated probability."""

    def __init__(self, config: ConfidenceExit) -> None:
        self.config = config

    def decide(self, layer: int, probs: Tensor, active: Tensor) -> Decisions:
        """Confident candidates exit; the relevant threshold is meant to be the stricter one."""
        c = self.config
        if layer < c.min_layer:
            return {}
        out: Decisions = {}
        if c.relevant is not None:
            for i in (active & (probs >= c.relevant)).nonzero().flatten():
                out[int(i)] = ExitReason.CONFIDENT_RELEVANT
        if c.irrelevant is not None:
            for i in (active & (probs <= c.irrelevant)).nonzero().flatten():
                out[int(i)] = ExitReason.CONFIDENT_IRRELEVANT
        return out


class TopNCascade:
    """Drop candidates that cannot reach the top-n by `margin`; stop once the top-n set is stable.

    Candidates are compared by their standing: the probability itself, or where the request carries
    first-stage scores, the fused key it will be ranked by (engine/fusion.py). The margin is always a
    probability: a candidate stops when even `margin` more probability would leave it below the n-th."""

    def __init__(self, config: CascadeExit) -> None:
        self.config = config
        self._last_top: frozenset[int] | None = None
        self._stable_for = 0

    def decide(
        self, layer: int, probs: Tensor, active: Tensor, standing: Standing | None = None
    ) -> Decisions:
        """Cascade drops, or everyone left exits STABLE after `patience` unchanged layers."""
        c = self.config
        scored = ~torch.isnan(probs)
        if layer < c.min_layer or int(scored.sum()) <= c.top_n:
            return {}
        keys = standing(0.0) if standing is not None else probs
        lifted = standing(c.margin) if standing is not None else probs + c.margin
        top = torch.topk(torch.where(scored, keys, -math.inf), c.top_n)
        threshold = float(top.values[-1])
        out: Decisions = {
            int(i): ExitReason.CASCADE for i in (active & scored & (lifted < threshold)).nonzero().flatten()
        }
        top_set = frozenset(int(i) for i in top.indices)
        self._stable_for = self._stable_for + 1 if top_set == self._last_top else 0
        self._last_top = top_set
        if self._stable_for >= c.patience:
            for i in active.nonzero().flatten():
                out.setdefault(int(i), ExitReason.STABLE)
        return out


@dataclass
class BudgetGuard:
    """Stops a request before a step that would overrun its deadline or FLOP allowance."""

    budget: Budget
    started: float = field(default_factory=time.monotonic)
    hard_deadline: float = math.inf  # an absolute monotonic deadline from the caller (e.g. gRPC)

    @property
    def deadline(self) -> float:
        """Monotonic time the request must finish by (inf without any time limit)."""
        own = self.started + self.budget.max_seconds if self.budget.max_seconds is not None else math.inf
        return min(own, self.hard_deadline)

    def expired(self, now: float | None = None) -> bool:
        """True once the deadline has passed."""
        return (now if now is not None else time.monotonic()) >= self.deadline

    def would_overrun(self, next_seconds: float, next_flops: float, spent_flops: float) -> bool:
        """True if the next step (predicted seconds and FLOPs) would break the budget."""
        if time.monotonic() + next_seconds > self.deadline:
            return True
        limit = self.budget.max_flops
        return limit is not None and spent_flops + next_flops > limit


class ExitSchedule:
    """The ordered policies of one request's plan, with their per-request state."""

    def __init__(self, plan: Plan, deadline: float | None = None, started: float | None = None) -> None:
        assert plan.depth is not None, "resolve the plan first"
        self.depth = plan.depth
        self.policies: list[FixedDepth | ConfidencePolicy | TopNCascade] = [FixedDepth(plan.depth)]
        if plan.confidence is not None:
            self.policies.append(ConfidencePolicy(plan.confidence))
        if plan.cascade is not None:
            self.policies.append(TopNCascade(plan.cascade))
        self.budget: BudgetGuard | None = None
        if plan.budget is not None or deadline is not None:
            hard = deadline if deadline is not None else math.inf
            since = started if started is not None else time.monotonic()  # the budget counts from arrival
            self.budget = BudgetGuard(plan.budget or Budget(), started=since, hard_deadline=hard)

    def decide(
        self, layer: int, probs: Tensor, active: Tensor, standing: Standing | None = None
    ) -> Decisions:
        """Decisions of all policies at `layer`; the first policy to claim a candidate names the reason.
        `standing` ranks candidates for the cascade where it is not the probability (fusion)."""
        out: Decisions = {}
        remaining = active.clone()
        for policy in self.policies:
            decided = (
                policy.decide(layer, probs, remaining, standing)
                if isinstance(policy, TopNCascade)
                else policy.decide(layer, probs, remaining)
            )
            for i, reason in decided.items():
                out.setdefault(i, reason)
                remaining[i] = False
        return out
