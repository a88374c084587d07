"""The named plans, one definition for the service, evaluation, training and benchmarks.

Named plans, built from the model's shape (L = num_layers):
- `full`: every layer, full width.
- `light`: depth L // 2, the passage halved (WidthTarget(ratio=2.0)) after layer max(1, L // 4), i.e.
  "half depth + 50% width from a quarter of the depth" (for SmolLM2-135M: depth 15, merge after 7).
- `adaptive`: full depth and width with a confidence exit from half depth on: a candidate stops at the
  first head layer >= L // 2 where its calibrated probability is <= 0.02 ("confidently irrelevant")
  or >= 0.99 ("confidently relevant"). These are the ConfidenceExit defaults the service uses; the
  asymmetry is the paper's (exit early on clear negatives, conservatively on positives). Starting at
  half depth keeps weak early layers from deciding. Thresholds and start layer are options.
- the `lean` family (issue #17), width first because width costs no training and keeps quality where
  depth does not: `lean` halves the passage after a third of the depth and halves it again after two
  thirds (for SmolLM2-135M: /2 after 10, /4 after 20), full depth; `lean-short` stops every candidate
  at the head at or below five sixths of the depth (layer 25). Measured in docs/results.md (issue
  #17): they save 33-41% of FLOPs but lose quality, below BM25 on held-out SciFact even fused with the
  first stage.
Depths snap to the nearest head layer at or below the wanted one (every layer has a head by default).

An artifact may define any of these names for its own model (ModelInfo.plans, a PlanSpec each): the
sub-structures it was trained for and selected on held-out data, e.g. the split-pair MiniLM's `light`
and `adaptive` are width schedules its H-LoRA compensates, `adaptive` with a top-30 cascade from layer
4, because its shallow layers do not rank (docs/results.md, issue #16); the shipped SmolLM2's `light` and
`adaptive` run only the first stage's top 30 / top 50 to full depth (FirstStageExit), because its cut
depths and widths lose to BM25 while the first stage's tail rarely reaches the top (issue #17); its
`adaptive` is also its budget plan (ModelInfo.budget_plan). Such a definition replaces the
generic one; where it has a confidence exit, the thresholds still come from ExitConfig (and the first
layer, when ExitConfig's is None, from the definition).
"""

from __future__ import annotations

from dataclasses import dataclass

from matryoshka.engine.plan import CascadeExit, ConfidenceExit, FirstStageExit, Plan
from matryoshka.model.matryoshka_model import ModelInfo, PlanSpec
from matryoshka.model.width import WidthTarget

PLAN_NAMES = ("full", "light", "adaptive", "lean", "lean-short")


@dataclass(frozen=True)
class ExitConfig:
    """The adaptive plan's thresholds; `min_layer` None means half the model's depth."""

    relevant: float | None = 0.99
    irrelevant: float | None = 0.02
    min_layer: int | None = None


def head_at_or_below(info: ModelInfo, layer: int) -> int:
    """The deepest head layer <= `layer`, or the shallowest head layer if none is that shallow."""
    below = [h for h in info.head_layers if h <= layer]
    return max(below) if below else min(info.head_layers)


def light_merge_layer(num_layers: int) -> int:
    """The layer after which the `light` plan halves the passage: a quarter of the depth (at least 1)."""
    return max(1, num_layers // 4)


def light_plan(info: ModelInfo) -> Plan:
    """Half depth, passage halved after a quarter of the depth (no merge if that is not before the depth)."""
    depth = head_at_or_below(info, max(1, info.num_layers // 2))
    merge_at = light_merge_layer(info.num_layers)
    width = {merge_at: WidthTarget(ratio=2.0)} if merge_at < depth else {}
    return Plan(depth=depth, width=width)


def adaptive_plan(info: ModelInfo, exits: ExitConfig | None = None) -> Plan:
    """Full depth with a confidence exit from `exits.min_layer` (default: half depth) on."""
    exits = exits or ExitConfig()
    min_layer = exits.min_layer if exits.min_layer is not None else max(1, info.num_layers // 2)
    return Plan(
        confidence=ConfidenceExit(relevant=exits.relevant, irrelevant=exits.irrelevant, min_layer=min_layer)
    )


def lean_width(num_layers: int) -> dict[int, WidthTarget]:
    """The `lean` width schedule: /2 after a third of the depth, /2 again after two thirds (no step that
    would fall on layer 0 or on the last layer)."""
    steps = {max(1, num_layers // 3), max(1, 2 * num_layers // 3)}
    return {layer: WidthTarget(ratio=2.0) for layer in sorted(steps) if layer < num_layers}


def lean_plan(info: ModelInfo, short: bool = False) -> Plan:
    """The `lean` width schedule at full depth; `short`: stopped at the head at or below five sixths of
    the depth (merges at or after it dropped)."""
    width = lean_width(info.num_layers)
    if not short:
        return Plan(width=width)
    depth = head_at_or_below(info, max(1, 5 * info.num_layers // 6))
    return Plan(depth=depth, width={k: v for k, v in width.items() if k < depth})


def defined_plan(info: ModelInfo, spec: PlanSpec, exits: ExitConfig | None) -> Plan:
    """A plan an artifact defines. Where it has a confidence exit, `exits` gives its thresholds (and
    its first layer, if set); its cascade drops, from its layer on, every candidate ranked below the
    top n (margin 0; fused with the first stage where the request has it)
    and never stops the request early."""
    width = {layer: WidthTarget(ratio=ratio) for layer, ratio in spec.width}
    confidence = cascade = None
    if spec.exit_min_layer is not None:
        exits = exits or ExitConfig()
        min_layer = exits.min_layer or spec.exit_min_layer
        confidence = ConfidenceExit(relevant=exits.relevant, irrelevant=exits.irrelevant, min_layer=min_layer)
    if spec.cascade_top_n is not None and spec.cascade_min_layer is not None:
        cascade = CascadeExit(
            top_n=spec.cascade_top_n, margin=0.0, patience=info.num_layers, min_layer=spec.cascade_min_layer
        )
    first_stage = FirstStageExit(spec.first_stage_top_n) if spec.first_stage_top_n is not None else None
    return Plan(
        depth=spec.depth, width=width, confidence=confidence, cascade=cascade, first_stage=first_stage
    )


def named_plan(name: str, info: ModelInfo, exits: ExitConfig | None = None) -> Plan:
    """The plan called `name` (one of PLAN_NAMES) for this model: the model's own definition if its
    artifact has one, else the generic one."""
    if name not in PLAN_NAMES:
        raise ValueError(f"unknown plan {name!r}; choose from {', '.join(PLAN_NAMES)}")
    if name in info.plans:
        return defined_plan(info, info.plans[name], exits)
    if name == "full":
        return Plan()
    if name == "light":
        return light_plan(info)
    if name == "adaptive":
        return adaptive_plan(info, exits)
    return lean_plan(info, short=name == "lean-short")  # the lean family, the only names left


def parse_plan_names(spec: str) -> list[str]:
    """A comma list of plan names ("" = none: first stage only); unknown or repeated names are errors."""
    names = [part.strip() for part in spec.split(",") if part.strip()]
    unknown = [n for n in names if n not in PLAN_NAMES]
    if unknown:
        raise ValueError(f"unknown plan(s) {', '.join(unknown)}; choose from {', '.join(PLAN_NAMES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"plan names repeat in {spec!r}")
    return names


def describe_plan(plan: Plan) -> str:
    """A short human description, e.g. "depth 15, width /2 after 7"."""
    parts = [f"depth {plan.depth}" if plan.depth is not None else "full depth"]
    for layer, target in sorted(plan.width.items()):
        parts.append(f"width /{target.ratio:g} after {layer}" if target.ratio else f"width ={target.length}")
    if plan.confidence is not None:
        c = plan.confidence
        parts.append(f"exit p<={c.irrelevant} or p>={c.relevant} from layer {c.min_layer}")
    if plan.first_stage is not None:
        parts.append(f"first stage top {plan.first_stage.top_n}")
    if plan.cascade is not None:
        parts.append(f"cascade top {plan.cascade.top_n} from layer {plan.cascade.min_layer}")
    return ", ".join(parts)
