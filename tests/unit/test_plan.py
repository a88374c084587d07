"""Plan.resolve: every broken rule is reported at once, each naming its exact field."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from matryoshka.engine.plan import Budget, CascadeExit, ConfidenceExit, Plan, PlanError
from matryoshka.model.matryoshka_model import ModelInfo
from matryoshka.model.width import WidthTarget

NAN = math.nan
INF = math.inf


@pytest.fixture
def info() -> ModelInfo:
    return ModelInfo(
        name="m",
        family="decoder",
        num_layers=8,
        hidden_size=64,
        head_layers=(2, 4, 6, 8),
        scoring="heads",
        template_version="t",
        fingerprint="f",
        calibration_version="c",
    )


def violated_fields(plan: Plan, info: ModelInfo) -> list[str]:
    """The fields named by the PlanError that resolving `plan` must raise."""
    with pytest.raises(PlanError) as caught:
        plan.resolve(info)
    error = caught.value
    assert isinstance(error, ValueError)
    assert error.violations, "a PlanError must name at least one violation"
    for v in error.violations:
        assert v.description, f"violation of {v.field} has no description"
        assert f"{v.field}: {v.description}" in str(error)
    return [v.field for v in error.violations]


# --- valid plans ---


def test_default_depth_resolves_to_num_layers(info: ModelInfo) -> None:
    plan = Plan()
    resolved = plan.resolve(info)
    assert resolved.depth == 8
    assert plan.depth is None, "resolve must not mutate the caller's plan"
    assert not resolved.adaptive


def test_explicit_depth_on_a_head_layer_is_kept(info: ModelInfo) -> None:
    assert Plan(depth=4).resolve(info).depth == 4
    assert Plan(depth=2).resolve(info).depth == 2


def test_resolve_sorts_the_width_schedule(info: ModelInfo) -> None:
    width = {5: WidthTarget(length=20), 1: WidthTarget(length=40), 3: WidthTarget(ratio=2.0)}
    resolved = Plan(depth=6, width=width).resolve(info)
    assert list(resolved.width) == [1, 3, 5]
    assert resolved.width[1] == WidthTarget(length=40)
    assert resolved.width[3] == WidthTarget(ratio=2.0)
    assert resolved.width[5] == WidthTarget(length=20)


def test_a_fully_specified_valid_plan_resolves(info: ModelInfo) -> None:
    plan = Plan(
        depth=6,
        width={1: WidthTarget(ratio=1.0), 2: WidthTarget(length=30), 4: WidthTarget(length=30)},
        confidence=ConfidenceExit(relevant=1.0, irrelevant=0.0, min_layer=6),
        cascade=CascadeExit(top_n=1, margin=0.0, patience=1, min_layer=1),
        budget=Budget(max_seconds=0.5, max_flops=1e12),
    )
    resolved = plan.resolve(info)
    assert resolved.depth == 6
    assert resolved.adaptive
    assert resolved.confidence == plan.confidence
    assert resolved.cascade == plan.cascade
    assert resolved.budget == plan.budget


@pytest.mark.parametrize(
    "confidence",
    [ConfidenceExit(relevant=None, irrelevant=0.1), ConfidenceExit(relevant=0.9, irrelevant=None)],
    ids=["only-irrelevant", "only-relevant"],
)
def test_one_sided_confidence_is_valid(info: ModelInfo, confidence: ConfidenceExit) -> None:
    assert Plan(confidence=confidence).resolve(info).confidence == confidence


@pytest.mark.parametrize("budget", [Budget(max_seconds=1.0), Budget(max_flops=1.0)], ids=["time", "flops"])
def test_one_sided_budget_is_valid(info: ModelInfo, budget: Budget) -> None:
    assert Plan(budget=budget).resolve(info).budget == budget


# --- one broken rule ---

BROKEN = [
    # depth
    pytest.param(Plan(depth=9), ["depth"], id="depth-above-layers"),
    pytest.param(Plan(depth=0), ["depth"], id="depth-zero"),
    pytest.param(Plan(depth=-1), ["depth"], id="depth-negative"),
    pytest.param(Plan(depth=3), ["depth"], id="depth-without-head"),
    pytest.param(Plan(depth=7), ["depth"], id="depth-without-head-7"),
    # width: merge layer must come before the depth
    pytest.param(Plan(depth=4, width={4: WidthTarget(ratio=2.0)}), ["width[4]"], id="width-layer-at-depth"),
    pytest.param(Plan(depth=4, width={6: WidthTarget(ratio=2.0)}), ["width[6]"], id="width-layer-past-depth"),
    pytest.param(Plan(width={8: WidthTarget(length=10)}), ["width[8]"], id="width-layer-at-default-depth"),
    pytest.param(Plan(width={0: WidthTarget(ratio=2.0)}), ["width[0]"], id="width-layer-zero"),
    # width: ratio
    pytest.param(Plan(width={3: WidthTarget(ratio=0.5)}), ["width[3].ratio"], id="ratio-below-1"),
    pytest.param(Plan(width={3: WidthTarget(ratio=0.999)}), ["width[3].ratio"], id="ratio-just-below-1"),
    pytest.param(Plan(width={3: WidthTarget(ratio=NAN)}), ["width[3].ratio"], id="ratio-nan"),
    pytest.param(Plan(width={3: WidthTarget(ratio=INF)}), ["width[3].ratio"], id="ratio-inf"),
    # width: exactly one of ratio / length
    pytest.param(Plan(width={3: WidthTarget()}), ["width[3]"], id="neither-ratio-nor-length"),
    pytest.param(
        Plan(width={3: WidthTarget(ratio=2.0, length=10)}), ["width[3]"], id="both-ratio-and-length"
    ),
    # width: length
    pytest.param(Plan(width={3: WidthTarget(length=0)}), ["width[3].length"], id="length-zero"),
    pytest.param(
        Plan(width={2: WidthTarget(length=10), 4: WidthTarget(length=11)}),
        ["width[4].length"],
        id="length-increases",
    ),
    pytest.param(
        Plan(width={4: WidthTarget(length=11), 2: WidthTarget(length=10)}),
        ["width[4].length"],
        id="length-increases-given-unsorted",
    ),
    pytest.param(
        Plan(width={1: WidthTarget(length=10), 3: WidthTarget(ratio=2.0), 5: WidthTarget(length=12)}),
        ["width[5].length"],
        id="length-increases-across-a-ratio",
    ),
    pytest.param(
        Plan(width={1: WidthTarget(length=30), 3: WidthTarget(length=10), 5: WidthTarget(length=20)}),
        ["width[5].length"],
        id="length-increases-after-decrease",
    ),
    # confidence
    pytest.param(Plan(confidence=ConfidenceExit(relevant=NAN)), ["confidence.relevant"], id="relevant-nan"),
    pytest.param(
        Plan(confidence=ConfidenceExit(relevant=1.01)), ["confidence.relevant"], id="relevant-above-1"
    ),
    pytest.param(Plan(confidence=ConfidenceExit(relevant=INF)), ["confidence.relevant"], id="relevant-inf"),
    pytest.param(
        Plan(confidence=ConfidenceExit(irrelevant=NAN)), ["confidence.irrelevant"], id="irrelevant-nan"
    ),
    pytest.param(
        Plan(confidence=ConfidenceExit(irrelevant=-0.01)), ["confidence.irrelevant"], id="irrelevant-negative"
    ),
    pytest.param(
        Plan(confidence=ConfidenceExit(relevant=0.5, irrelevant=0.5)),
        ["confidence.irrelevant"],
        id="irrelevant-equals-relevant",
    ),
    pytest.param(
        Plan(confidence=ConfidenceExit(relevant=0.4, irrelevant=0.6)),
        ["confidence.irrelevant"],
        id="irrelevant-above-relevant",
    ),
    pytest.param(
        Plan(confidence=ConfidenceExit(relevant=None, irrelevant=None)), ["confidence"], id="confidence-empty"
    ),
    pytest.param(
        Plan(confidence=ConfidenceExit(min_layer=0)), ["confidence.min_layer"], id="conf-min-layer-0"
    ),
    pytest.param(
        Plan(depth=4, confidence=ConfidenceExit(min_layer=5)),
        ["confidence.min_layer"],
        id="conf-min-past-depth",
    ),
    pytest.param(
        Plan(confidence=ConfidenceExit(min_layer=9)), ["confidence.min_layer"], id="conf-min-past-layers"
    ),
    # cascade
    pytest.param(Plan(cascade=CascadeExit(top_n=0)), ["cascade.top_n"], id="top-n-zero"),
    pytest.param(Plan(cascade=CascadeExit(top_n=-3)), ["cascade.top_n"], id="top-n-negative"),
    pytest.param(Plan(cascade=CascadeExit(top_n=5, margin=-0.1)), ["cascade.margin"], id="margin-negative"),
    pytest.param(Plan(cascade=CascadeExit(top_n=5, margin=NAN)), ["cascade.margin"], id="margin-nan"),
    pytest.param(Plan(cascade=CascadeExit(top_n=5, margin=INF)), ["cascade.margin"], id="margin-inf"),
    pytest.param(Plan(cascade=CascadeExit(top_n=5, patience=0)), ["cascade.patience"], id="patience-zero"),
    pytest.param(
        Plan(cascade=CascadeExit(top_n=5, min_layer=0)), ["cascade.min_layer"], id="casc-min-layer-0"
    ),
    pytest.param(
        Plan(depth=2, cascade=CascadeExit(top_n=5, min_layer=3)),
        ["cascade.min_layer"],
        id="casc-min-past-depth",
    ),
    # budget
    pytest.param(Plan(budget=Budget()), ["budget"], id="budget-empty"),
    pytest.param(Plan(budget=Budget(max_seconds=0.0)), ["budget.max_seconds"], id="seconds-zero"),
    pytest.param(Plan(budget=Budget(max_seconds=-1.0)), ["budget.max_seconds"], id="seconds-negative"),
    pytest.param(Plan(budget=Budget(max_seconds=NAN)), ["budget.max_seconds"], id="seconds-nan"),
    pytest.param(Plan(budget=Budget(max_seconds=INF)), ["budget.max_seconds"], id="seconds-inf"),
    pytest.param(Plan(budget=Budget(max_flops=0.0)), ["budget.max_flops"], id="flops-zero"),
    pytest.param(Plan(budget=Budget(max_flops=NAN)), ["budget.max_flops"], id="flops-nan"),
    pytest.param(
        Plan(budget=Budget(max_seconds=1.0, max_flops=-5.0)),
        ["budget.max_flops"],
        id="flops-negative-with-time",
    ),
]


@pytest.mark.parametrize(("plan", "expected"), BROKEN)
def test_each_broken_rule_names_its_field(info: ModelInfo, plan: Plan, expected: list[str]) -> None:
    assert violated_fields(plan, info) == expected


# --- several at once ---


def test_every_broken_rule_is_reported_at_once(info: ModelInfo) -> None:
    plan = Plan(
        depth=4,
        width={
            2: WidthTarget(length=10),
            3: WidthTarget(length=12),  # widths must not increase
            4: WidthTarget(ratio=0.5),  # at the depth, and ratio below 1
        },
        confidence=ConfidenceExit(relevant=NAN, irrelevant=0.3, min_layer=0),
        cascade=CascadeExit(top_n=0, margin=-1.0, patience=0, min_layer=5),
        budget=Budget(max_seconds=NAN, max_flops=0.0),
    )
    assert Counter(violated_fields(plan, info)) == Counter(
        [
            "width[3].length",
            "width[4]",
            "width[4].ratio",
            "confidence.relevant",
            "confidence.min_layer",
            "cascade.top_n",
            "cascade.margin",
            "cascade.patience",
            "cascade.min_layer",
            "budget.max_seconds",
            "budget.max_flops",
        ]
    )


def test_bad_depth_and_bad_budget_are_both_reported(info: ModelInfo) -> None:
    fields = violated_fields(Plan(depth=3, budget=Budget()), info)
    assert Counter(fields) == Counter(["depth", "budget"])


def test_one_target_can_break_several_rules(info: ModelInfo) -> None:
    # Both ratio and length set, the ratio is NaN, and the length is 0, on a layer past the depth.
    fields = violated_fields(Plan(depth=2, width={5: WidthTarget(ratio=NAN, length=0)}), info)
    assert Counter(fields) == Counter(["width[5]", "width[5]", "width[5].ratio", "width[5].length"])


def test_irrelevant_out_of_range_and_above_relevant_are_both_reported(info: ModelInfo) -> None:
    fields = violated_fields(Plan(confidence=ConfidenceExit(relevant=0.9, irrelevant=1.5)), info)
    assert fields == ["confidence.irrelevant", "confidence.irrelevant"]
