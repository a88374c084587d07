"""Exit policies on hand-made probability vectors (float64, NaN = not scored yet) and active masks."""

from __future__ import annotations

import math
import time

import pytest
import torch

from matryoshka.engine.exits import (
    BudgetGuard,
    ConfidencePolicy,
    ExitReason,
    ExitSchedule,
    FixedDepth,
    TopNCascade,
)
from matryoshka.engine.plan import Budget, CascadeExit, ConfidenceExit, Plan

NAN = math.nan
R = ExitReason


def probs(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def active(*flags: int) -> torch.Tensor:
    return torch.tensor([bool(f) for f in flags])


def everyone(n: int) -> torch.Tensor:
    return torch.ones(n, dtype=torch.bool)


# --- FixedDepth ---


def test_fixed_depth_exits_nobody_before_the_depth() -> None:
    policy = FixedDepth(4)
    for layer in (1, 2, 3):
        assert policy.decide(layer, probs(0.5, 0.1, 0.9), everyone(3)) == {}


@pytest.mark.parametrize("layer", [4, 5])
def test_fixed_depth_exits_every_active_candidate_at_the_depth(layer: int) -> None:
    decisions = FixedDepth(4).decide(layer, probs(0.5, NAN, 0.9, 0.2), active(1, 1, 0, 1))
    assert decisions == {0: R.DEPTH, 1: R.DEPTH, 3: R.DEPTH}


# --- ConfidencePolicy ---


def test_confidence_exits_nobody_before_min_layer() -> None:
    policy = ConfidencePolicy(ConfidenceExit(relevant=0.9, irrelevant=0.1, min_layer=3))
    p = probs(0.999, 0.001, 0.5)
    assert policy.decide(1, p, everyone(3)) == {}
    assert policy.decide(2, p, everyone(3)) == {}
    assert policy.decide(3, p, everyone(3)) == {0: R.CONFIDENT_RELEVANT, 1: R.CONFIDENT_IRRELEVANT}


def test_asymmetric_thresholds_tag_both_directions() -> None:
    policy = ConfidencePolicy(ConfidenceExit(relevant=0.99, irrelevant=0.02, min_layer=1))
    p = probs(0.995, 0.98, 0.5, 0.03, 0.01, 0.99, 0.02, NAN)
    decisions = policy.decide(1, p, everyone(8))
    assert decisions == {
        0: R.CONFIDENT_RELEVANT,
        4: R.CONFIDENT_IRRELEVANT,
        5: R.CONFIDENT_RELEVANT,  # thresholds are inclusive
        6: R.CONFIDENT_IRRELEVANT,
    }


def test_confidence_never_exits_inactive_or_unscored_candidates() -> None:
    policy = ConfidencePolicy(ConfidenceExit(relevant=0.9, irrelevant=0.1))
    decisions = policy.decide(2, probs(0.95, 0.05, 0.95, 0.05, NAN), active(0, 0, 1, 1, 1))
    assert decisions == {2: R.CONFIDENT_RELEVANT, 3: R.CONFIDENT_IRRELEVANT}


def test_one_sided_confidence() -> None:
    only_irrelevant = ConfidencePolicy(ConfidenceExit(relevant=None, irrelevant=0.1))
    only_relevant = ConfidencePolicy(ConfidenceExit(relevant=0.9, irrelevant=None))
    p = probs(0.99, 0.01, 0.5)
    assert only_irrelevant.decide(1, p, everyone(3)) == {1: R.CONFIDENT_IRRELEVANT}
    assert only_relevant.decide(1, p, everyone(3)) == {0: R.CONFIDENT_RELEVANT}


# --- TopNCascade ---


def test_cascade_exits_nobody_before_min_layer() -> None:
    cascade = TopNCascade(CascadeExit(top_n=1, margin=0.0, patience=1, min_layer=3))
    p = probs(0.9, 0.1, 0.05)
    assert cascade.decide(1, p, everyone(3)) == {}
    assert cascade.decide(2, p, everyone(3)) == {}
    assert cascade.decide(3, p, everyone(3)) == {1: R.CASCADE, 2: R.CASCADE}


def test_cascade_drops_exactly_those_below_the_nth_best_by_margin() -> None:
    cascade = TopNCascade(CascadeExit(top_n=2, margin=0.25, patience=100))
    # Second best is 0.75; drop iff p + 0.25 < 0.75, i.e. p < 0.5 (0.5 itself stays: the rule is strict).
    p = probs(0.875, 0.75, 0.5, 0.4375, 0.0625, NAN, 0.625)
    decisions = cascade.decide(1, p, everyone(7))
    assert decisions == {3: R.CASCADE, 4: R.CASCADE}


def test_cascade_never_drops_inactive_candidates() -> None:
    cascade = TopNCascade(CascadeExit(top_n=1, margin=0.0, patience=100))
    p = probs(0.9, 0.1, 0.2, 0.3)
    decisions = cascade.decide(1, p, active(1, 0, 1, 0))
    assert decisions == {2: R.CASCADE}


def test_cascade_threshold_counts_exited_candidates_scores() -> None:
    """Exited candidates keep their final probability and still define the n-th best."""
    cascade = TopNCascade(CascadeExit(top_n=1, margin=0.0, patience=100))
    decisions = cascade.decide(1, probs(0.95, 0.6, 0.5), active(0, 1, 1))
    assert decisions == {1: R.CASCADE, 2: R.CASCADE}


def test_cascade_ranks_by_the_standing_it_is_given_and_lifts_by_probability() -> None:
    """With a standing (fusion), the n-th best is taken on its keys, and a candidate stops only if its
    key with `margin` more probability stays below it."""
    cascade = TopNCascade(CascadeExit(top_n=1, margin=0.1, patience=100))
    p = probs(0.9, 0.2, 0.5, NAN)
    first_stage = probs(0.0, 10.0, 0.0, 5.0)  # a stand-in key: probability + first-stage bonus

    def standing(lift: float) -> torch.Tensor:
        return p + lift + first_stage

    # keys 0.9, 10.2, 0.5: candidate 1 leads; by probability alone it would be the one to drop
    assert cascade.decide(1, p, everyone(4), standing) == {0: R.CASCADE, 2: R.CASCADE}
    assert TopNCascade(CascadeExit(top_n=1, margin=0.1, patience=100)).decide(1, p, everyone(4)) == {
        1: R.CASCADE,
        2: R.CASCADE,
    }
    lifted = TopNCascade(CascadeExit(top_n=1, margin=9.5, patience=100))  # 0.9 + 9.5 >= 10.2: stays
    assert lifted.decide(1, p, everyone(4), standing) == {2: R.CASCADE}


@pytest.mark.parametrize(
    "p",
    [probs(0.9, 0.01, NAN, NAN), probs(0.9, 0.01), probs(0.9, NAN, NAN, NAN, NAN)],
    ids=["two-scored-of-four", "two-of-two", "one-scored"],
)
def test_cascade_does_nothing_when_scored_candidates_do_not_exceed_top_n(p: torch.Tensor) -> None:
    cascade = TopNCascade(CascadeExit(top_n=2, margin=0.0, patience=1))
    n = p.shape[0]
    for layer in range(1, 6):
        assert cascade.decide(layer, p, everyone(n)) == {}


def test_stable_after_patience_unchanged_layers() -> None:
    cascade = TopNCascade(CascadeExit(top_n=2, margin=0.5, patience=2))
    act = everyone(4)
    # Top-2 is {0, 1} throughout; nobody is far enough below to be dropped by the margin.
    assert cascade.decide(1, probs(0.8, 0.7, 0.6, 0.65), act) == {}  # first top-2 seen
    assert cascade.decide(2, probs(0.8, 0.75, 0.7, 0.7), act) == {}  # unchanged once
    decisions = cascade.decide(3, probs(0.9, 0.75, 0.7, 0.7), act)  # unchanged twice -> stable
    assert decisions == {0: R.STABLE, 1: R.STABLE, 2: R.STABLE, 3: R.STABLE}


def test_stable_counter_resets_when_the_top_set_changes() -> None:
    cascade = TopNCascade(CascadeExit(top_n=1, margin=1.0, patience=2))  # margin 1: no cascade drops
    act = everyone(3)
    assert cascade.decide(1, probs(0.9, 0.5, 0.1), act) == {}  # top {0}
    assert cascade.decide(2, probs(0.9, 0.5, 0.1), act) == {}  # unchanged once
    assert cascade.decide(3, probs(0.4, 0.5, 0.1), act) == {}  # top {1}: counter resets
    assert cascade.decide(4, probs(0.4, 0.6, 0.1), act) == {}  # unchanged once (would be 3 without reset)
    assert cascade.decide(5, probs(0.4, 0.7, 0.1), act) == {0: R.STABLE, 1: R.STABLE, 2: R.STABLE}


def test_stable_keeps_cascade_reason_and_skips_inactive() -> None:
    cascade = TopNCascade(CascadeExit(top_n=1, margin=0.25, patience=1))
    act = active(1, 1, 1, 0)
    assert cascade.decide(1, probs(0.9, 0.8, 0.3, 0.2), act) == {2: R.CASCADE}
    act = active(1, 1, 0, 0)
    decisions = cascade.decide(2, probs(0.9, 0.5, 0.3, 0.2), act)
    assert decisions == {0: R.STABLE, 1: R.CASCADE}


# --- BudgetGuard ---


def test_budget_would_overrun_on_time() -> None:
    guard = BudgetGuard(Budget(max_seconds=0.5))
    assert guard.would_overrun(next_seconds=100.0, next_flops=0.0, spent_flops=0.0)
    assert guard.would_overrun(next_seconds=0.75, next_flops=0.0, spent_flops=0.0)
    # Without a FLOP limit, FLOPs never overrun; a step that fits the time does not.
    roomy = BudgetGuard(Budget(max_seconds=3600.0))
    assert not roomy.would_overrun(next_seconds=0.001, next_flops=1e30, spent_flops=1e30)
    late = BudgetGuard(Budget(max_seconds=1.0), started=time.monotonic() - 2.0)
    assert late.would_overrun(next_seconds=0.0, next_flops=0.0, spent_flops=0.0)


def test_budget_would_overrun_on_flops() -> None:
    guard = BudgetGuard(Budget(max_flops=100.0))
    assert guard.deadline == math.inf
    assert not guard.would_overrun(next_seconds=1e9, next_flops=40.0, spent_flops=60.0)  # exactly fits
    assert guard.would_overrun(next_seconds=0.0, next_flops=41.0, spent_flops=60.0)
    assert guard.would_overrun(next_seconds=0.0, next_flops=1.0, spent_flops=100.0)


def test_budget_checks_both_limits() -> None:
    guard = BudgetGuard(Budget(max_seconds=3600.0, max_flops=10.0))
    assert not guard.would_overrun(next_seconds=1.0, next_flops=5.0, spent_flops=5.0)
    assert guard.would_overrun(next_seconds=1.0, next_flops=6.0, spent_flops=5.0)
    assert guard.would_overrun(next_seconds=7200.0, next_flops=0.0, spent_flops=0.0)


def test_budget_deadline_and_expired() -> None:
    guard = BudgetGuard(Budget(max_seconds=0.5), started=100.0)
    assert guard.deadline == 100.5
    assert not guard.expired(now=100.0)
    assert not guard.expired(now=100.4)
    assert guard.expired(now=100.5)
    assert guard.expired(now=200.0)


def test_budget_expired_uses_the_clock() -> None:
    assert BudgetGuard(Budget(max_seconds=1.0), started=time.monotonic() - 2.0).expired()
    assert not BudgetGuard(Budget(max_seconds=3600.0)).expired()
    assert not BudgetGuard(Budget(max_flops=1.0), started=0.0).expired()


# --- ExitSchedule ---


def schedule(**kwargs: object) -> ExitSchedule:
    return ExitSchedule(Plan(depth=4, **kwargs))  # type: ignore[arg-type]


def test_schedule_builds_policies_in_order() -> None:
    s = schedule(confidence=ConfidenceExit(), cascade=CascadeExit(top_n=1), budget=Budget(max_seconds=1.0))
    assert [type(p) for p in s.policies] == [FixedDepth, ConfidencePolicy, TopNCascade]
    assert isinstance(s.budget, BudgetGuard)
    plain = schedule()
    assert [type(p) for p in plain.policies] == [FixedDepth]
    assert plain.budget is None


def test_schedule_needs_a_resolved_plan() -> None:
    with pytest.raises(AssertionError):
        ExitSchedule(Plan())


def test_at_depth_everything_exits_with_depth_even_when_confident() -> None:
    s = schedule(
        confidence=ConfidenceExit(relevant=0.9, irrelevant=0.1), cascade=CascadeExit(top_n=1, margin=0.0)
    )
    decisions = s.decide(4, probs(0.99, 0.01, 0.5, 0.3), active(1, 1, 1, 0))
    assert decisions == {0: R.DEPTH, 1: R.DEPTH, 2: R.DEPTH}


def test_confidence_claims_before_cascade() -> None:
    s = schedule(
        confidence=ConfidenceExit(relevant=0.9, irrelevant=0.1), cascade=CascadeExit(top_n=1, margin=0.25)
    )
    # 1 is both confidently irrelevant and below the top-1 by more than the margin: confidence comes
    # first. 0 exits confidently but still sets the threshold (0.75) that drops 2 and keeps 3.
    decisions = s.decide(2, probs(0.95, 0.05, 0.5, 0.8), everyone(4))
    assert decisions == {0: R.CONFIDENT_RELEVANT, 1: R.CONFIDENT_IRRELEVANT, 2: R.CASCADE}


def test_schedule_before_min_layers_exits_nobody() -> None:
    s = schedule(
        confidence=ConfidenceExit(relevant=0.9, irrelevant=0.1, min_layer=3),
        cascade=CascadeExit(top_n=1, margin=0.0, min_layer=3),
    )
    p = probs(0.99, 0.01, 0.5)
    assert s.decide(1, p, everyone(3)) == {}
    assert s.decide(2, p, everyone(3)) == {}
    assert s.decide(3, p, everyone(3)) == {0: R.CONFIDENT_RELEVANT, 1: R.CONFIDENT_IRRELEVANT, 2: R.CASCADE}


def test_schedule_does_not_mutate_the_active_mask() -> None:
    s = schedule(confidence=ConfidenceExit(relevant=0.9, irrelevant=0.1))
    act = everyone(3)
    s.decide(2, probs(0.99, 0.01, 0.5), act)
    assert act.tolist() == [True, True, True]
