"""The named plans (`full`, `light`, `adaptive`): their shapes from the model's, and their names."""

from __future__ import annotations

from dataclasses import replace

import pytest

from matryoshka.engine.named_plans import (
    PLAN_NAMES,
    ExitConfig,
    describe_plan,
    lean_width,
    light_plan,
    named_plan,
    parse_plan_names,
)
from matryoshka.engine.plan import CascadeExit, ConfidenceExit, FirstStageExit, Plan
from matryoshka.model.matryoshka_model import ModelInfo, PlanSpec
from matryoshka.model.width import WidthTarget


def info(num_layers: int, head_layers: tuple[int, ...] | None = None) -> ModelInfo:
    heads = head_layers or tuple(range(1, num_layers + 1))
    return ModelInfo("m", "decoder", num_layers, 64, heads, "heads", "v1", "fp", "identity")


def test_named_plans_for_a_30_layer_model() -> None:
    model = info(30)
    assert named_plan("full", model) == Plan()
    assert light_plan(model) == Plan(depth=15, width={7: WidthTarget(ratio=2.0)})
    assert named_plan("adaptive", model) == Plan(
        confidence=ConfidenceExit(relevant=0.99, irrelevant=0.02, min_layer=15)
    )
    custom = named_plan("adaptive", model, ExitConfig(relevant=None, irrelevant=0.1, min_layer=20))
    assert custom.confidence == ConfidenceExit(relevant=None, irrelevant=0.1, min_layer=20)
    for name in ("full", "light", "adaptive"):
        named_plan(name, model).resolve(model)


def test_light_plan_snaps_to_a_head_layer_and_fits_small_models() -> None:
    sparse = info(30, head_layers=(10, 20, 30))
    assert light_plan(sparse) == Plan(depth=10, width={7: WidthTarget(ratio=2.0)})
    assert light_plan(info(4)) == Plan(depth=2, width={1: WidthTarget(ratio=2.0)})
    assert light_plan(info(2)) == Plan(depth=1)  # no layer before the depth to merge after
    for model in (sparse, info(4), info(2), info(1)):
        light_plan(model).resolve(model)


def test_plan_names_parse() -> None:
    assert parse_plan_names("full, light,adaptive") == ["full", "light", "adaptive"]
    assert parse_plan_names("") == []
    with pytest.raises(ValueError, match="unknown plan"):
        parse_plan_names("full,heavy")
    with pytest.raises(ValueError, match="repeat"):
        parse_plan_names("full,full")


def test_the_bench_and_training_use_the_light_plan_shape() -> None:
    from matryoshka.bench.engine import configs
    from matryoshka.train.recipe import light_structures

    model = info(30)
    light = light_plan(model)
    assert configs(model) == {
        "depth15": Plan(depth=15),
        "width50@7": Plan(width={7: WidthTarget(ratio=2.0)}),
        "depth15+width50@7": light,
    }
    assert [s.label for s in light_structures(30, (2.0, 4.0))] == ["full", "r2@7", "r4@7"]


def test_the_lean_family_for_a_30_layer_model() -> None:
    model = info(30, head_layers=(15, 20, 22, 25, 30))
    halved_twice = {10: WidthTarget(ratio=2.0), 20: WidthTarget(ratio=2.0)}
    assert named_plan("lean", model) == Plan(width=halved_twice)
    assert named_plan("lean-short", model) == Plan(depth=25, width=halved_twice)
    assert named_plan("lean-short", info(30, head_layers=(15, 30))) == Plan(
        depth=15, width={10: WidthTarget(ratio=2.0)}
    )  # snapped to a head; a merge at or after the depth is dropped
    for name in PLAN_NAMES:
        named_plan(name, model).resolve(model)


@pytest.mark.parametrize("layers", [1, 2, 3, 4, 6, 12])
def test_the_lean_family_fits_small_models(layers: int) -> None:
    model = info(layers)
    assert all(1 <= layer < layers for layer in lean_width(layers))
    for name in ("lean", "lean-short"):
        named_plan(name, model).resolve(model)


def test_an_artifact_plan_with_a_first_stage_exit() -> None:
    """A manifest's plan may start its cascade at layer 0 (only the first stage's top n run)."""
    spec = PlanSpec.from_json({"first_stage_top_n": 50, "cascade_top_n": 10, "cascade_min_layer": 25})
    assert PlanSpec.from_json(spec.to_json()) == spec
    model = replace(info(30), plans={"adaptive": spec})
    plan = named_plan("adaptive", model)
    assert plan.first_stage == FirstStageExit(top_n=50)
    assert plan.cascade == CascadeExit(top_n=10, margin=0.0, patience=30, min_layer=25)
    assert describe_plan(plan.resolve(model)) == (
        "depth 30, first stage top 50, cascade top 10 from layer 25"
    )
