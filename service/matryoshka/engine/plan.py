"""A Plan says how deep and how wide a request may run, when candidates may exit, and the budget.

Plans arrive from callers, so validation reports every broken rule at once, each naming its field.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from matryoshka.model.matryoshka_model import ModelInfo
from matryoshka.model.width import WidthTarget as WidthTarget  # re-exported: plans speak in width targets


@dataclass(frozen=True)
class FieldViolation:
    """One broken rule: the field (dotted path) and what is wrong with it."""

    field: str
    description: str


Callback = Callable[[FieldViolation], None]


class PlanError(ValueError):
    """A plan that cannot run on this model; `violations` lists every broken rule."""

    def __init__(self, violations: list[FieldViolation]) -> None:
        self.violations = violations
        super().__init__("; ".join(f"{v.field}: {v.description}" for v in violations))


@dataclass(frozen=True)
class ConfidenceExit:
    """Per-candidate exit on calibrated probability: early on a confident "not relevant" (p <=
    `irrelevant`), conservatively on "relevant" (p >= `relevant`); never before `min_layer`."""

    relevant: float | None = 0.99
    irrelevant: float | None = 0.02
    min_layer: int = 1


@dataclass(frozen=True)
class CascadeExit:
    """Top-n cascade: drop a candidate whose probability plus `margin` is below the n-th best; stop the
    request once the top-n set has not changed for `patience` scored layers; never before `min_layer`."""

    top_n: int
    margin: float = 0.1
    patience: int = 3
    min_layer: int = 1


@dataclass(frozen=True)
class FirstStageExit:
    """The cascade's layer 0: only the first stage's best `top_n` documents (by first-stage score where
    the request has them, else the input order) run the model; the others stop before layer 1."""

    top_n: int


@dataclass(frozen=True)
class Budget:
    """Upper bounds for one request: wall-clock seconds from its start and/or FLOPs."""

    max_seconds: float | None = None
    max_flops: float | None = None


@dataclass(frozen=True)
class Plan:
    """Depth (last layer; None = the model's full depth), width schedule (layer -> target, applied
    after that layer), exit policies (confidence, cascade and the cascade's layer 0, `first_stage`) and
    budget. A plan without exits is a fixed-depth plan."""

    depth: int | None = None
    width: Mapping[int, WidthTarget] = field(default_factory=dict)
    confidence: ConfidenceExit | None = None
    cascade: CascadeExit | None = None
    budget: Budget | None = None
    first_stage: FirstStageExit | None = None

    @property
    def adaptive(self) -> bool:
        """True when candidates may stop before the plan's depth."""
        exits = (self.confidence, self.cascade, self.budget, self.first_stage)
        return any(e is not None for e in exits)

    def resolve(self, info: ModelInfo) -> Plan:
        """This plan checked against a model, with depth filled in; raises PlanError."""
        violations: list[FieldViolation] = []
        add = violations.append
        depth = self.depth if self.depth is not None else info.num_layers
        depth_ok = 1 <= depth <= info.num_layers
        if not depth_ok:
            add(
                FieldViolation(
                    "depth", f"must be within 1..{info.num_layers} for model {info.name}, got {depth}"
                )
            )
        elif depth not in info.head_layers:
            add(FieldViolation("depth", f"layer {depth} has no head; heads at {list(info.head_layers)}"))
        # Judge the other fields against the model, not against a broken depth.
        bound = depth if depth_ok else info.num_layers
        _check_width(self.width, bound, add)
        if self.confidence is not None:
            _check_confidence(self.confidence, bound, add)
        if self.cascade is not None:
            _check_cascade(self.cascade, bound, add)
        if self.budget is not None:
            _check_budget(self.budget, add)
        if self.first_stage is not None and self.first_stage.top_n < 1:
            add(FieldViolation("first_stage.top_n", f"must be >= 1, got {self.first_stage.top_n}"))
        if violations:
            raise PlanError(violations)
        return replace(self, depth=depth, width=dict(sorted(self.width.items())))


def _finite(x: float) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def _check_width(width: Mapping[int, WidthTarget], depth: int, add: Callback) -> None:
    last_length: tuple[int, int] | None = None
    for layer in sorted(width):
        target = width[layer]
        where = f"width[{layer}]"
        if (target.ratio is None) == (target.length is None):
            add(FieldViolation(where, "set exactly one of ratio or length"))
        if not 1 <= layer < depth:
            add(
                FieldViolation(where, f"merge layer must be within 1..{depth - 1} (before the depth {depth})")
            )
        if target.ratio is not None and not (_finite(target.ratio) and target.ratio >= 1):
            add(FieldViolation(f"{where}.ratio", f"must be a finite number >= 1, got {target.ratio}"))
        if target.length is not None:
            if target.length < 1:
                add(FieldViolation(f"{where}.length", f"must be >= 1, got {target.length}"))
            if last_length is not None and target.length > last_length[1]:
                add(
                    FieldViolation(
                        f"{where}.length",
                        f"widths must not increase with depth: {target.length} after {last_length[1]} "
                        f"at layer {last_length[0]}",
                    )
                )
            last_length = (layer, target.length)


def _check_probability(value: float | None, name: str, add: Callback) -> None:
    if value is not None and not (_finite(value) and 0.0 <= value <= 1.0):
        add(FieldViolation(name, f"must be a probability in [0, 1], got {value}"))


def _check_min_layer(value: int, depth: int, name: str, add: Callback) -> None:
    if not 1 <= value <= depth:
        add(FieldViolation(name, f"must be within 1..{depth}, got {value}"))


def _check_confidence(c: ConfidenceExit, depth: int, add: Callback) -> None:
    _check_probability(c.relevant, "confidence.relevant", add)
    _check_probability(c.irrelevant, "confidence.irrelevant", add)
    if c.relevant is None and c.irrelevant is None:
        add(FieldViolation("confidence", "set at least one of relevant or irrelevant"))
    if (
        c.relevant is not None
        and c.irrelevant is not None
        and _finite(c.relevant)
        and _finite(c.irrelevant)
        and not c.irrelevant < c.relevant
    ):
        add(
            FieldViolation(
                "confidence.irrelevant", f"must be below relevant ({c.relevant}), got {c.irrelevant}"
            )
        )
    _check_min_layer(c.min_layer, depth, "confidence.min_layer", add)


def _check_cascade(c: CascadeExit, depth: int, add: Callback) -> None:
    if c.top_n < 1:
        add(FieldViolation("cascade.top_n", f"must be >= 1, got {c.top_n}"))
    if not (_finite(c.margin) and c.margin >= 0):
        add(FieldViolation("cascade.margin", f"must be a finite number >= 0, got {c.margin}"))
    if c.patience < 1:
        add(FieldViolation("cascade.patience", f"must be >= 1, got {c.patience}"))
    _check_min_layer(c.min_layer, depth, "cascade.min_layer", add)


def _check_budget(b: Budget, add: Callback) -> None:
    if b.max_seconds is None and b.max_flops is None:
        add(FieldViolation("budget", "set max_seconds and/or max_flops"))
    if b.max_seconds is not None and not (_finite(b.max_seconds) and b.max_seconds > 0):
        add(FieldViolation("budget.max_seconds", f"must be a finite number > 0, got {b.max_seconds}"))
    if b.max_flops is not None and not (_finite(b.max_flops) and b.max_flops > 0):
        add(FieldViolation("budget.max_flops", f"must be a finite number > 0, got {b.max_flops}"))
