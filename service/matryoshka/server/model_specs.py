"""Which models a server serves, by name: the single-model settings (the default model) and the
`models` entries, each `NAME=SOURCE[,scoring=S][,artifact=PATH]` (docs/models.md "Several models").

SOURCE is a packaged backbone name (`smollm2-135m`, `minilm-l6`) or, when it contains a `/` or starts
with `.` or `~`, a checkpoint directory. No torch here: the CLI and the settings parse with it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast, get_args

if TYPE_CHECKING:
    from matryoshka.server.settings import Settings

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
Kind = Literal["backbone", "directory"]
ScoringName = Literal["heads", "query_likelihood", "cosine"]
SCORINGS: tuple[str, ...] = get_args(ScoringName)


class ModelSpecError(ValueError):
    """A `models` entry, or the set of served models, that cannot be served (refused at start-up)."""


@dataclass(frozen=True)
class ModelSpec:
    """One served model: its name, where it comes from and, for a backbone, its scoring and artifact."""

    name: str
    source: str
    kind: Kind
    scoring: ScoringName | None = None
    artifact: str | None = None

    def describe(self) -> str:
        """The spec as an operator wrote it, for error messages and logs."""
        options = [f"scoring={self.scoring}"] * bool(self.scoring) + [f"artifact={self.artifact}"] * bool(
            self.artifact
        )
        return ",".join([f"{self.name}={self.source}", *options])


def kind_of(source: str) -> Kind:
    """A checkpoint directory when `source` reads as a path, else a packaged backbone name."""
    return "directory" if "/" in source or source.startswith((".", "~")) else "backbone"


def parse_spec(entry: str) -> ModelSpec:
    """Parse one `NAME=SOURCE[,scoring=S][,artifact=PATH]` entry; raises ModelSpecError."""
    name, sep, rest = entry.partition("=")
    name = name.strip()
    if not sep or not rest.strip():
        raise ModelSpecError(f"models entry {entry!r}: write NAME=SOURCE (a backbone name or a directory)")
    if not NAME.match(name):
        raise ModelSpecError(
            f"models entry {entry!r}: name {name!r} must be 1-128 letters, digits or ._:- (not first)"
        )
    source, *parts = (p.strip() for p in rest.split(","))
    options: dict[str, str] = {}
    for part in parts:
        key, eq, value = part.partition("=")
        if key not in ("scoring", "artifact") or not eq or not value:
            raise ModelSpecError(f"models entry {entry!r}: unknown option {part!r}; use scoring=, artifact=")
        if key in options:
            raise ModelSpecError(f"models entry {entry!r}: {key} given twice")
        options[key] = value
    kind = kind_of(source)
    if not source:
        raise ModelSpecError(f"models entry {entry!r}: the source is empty")
    if kind == "directory" and options:
        raise ModelSpecError(
            f"models entry {entry!r}: scoring= and artifact= apply to packaged backbones only; "
            "a checkpoint directory scores with its own heads"
        )
    scoring = options.get("scoring")
    if scoring is not None and scoring not in SCORINGS:
        raise ModelSpecError(f"models entry {entry!r}: scoring must be one of {', '.join(SCORINGS)}")
    return ModelSpec(name, source, kind, cast(ScoringName | None, scoring), options.get("artifact"))


def served_specs(settings: Settings) -> list[ModelSpec]:
    """Every served model, the default first: the single-model settings (`model`, `model_dir`,
    `scoring`, `artifact`) when any is set or no `models` entry is given, then the `models` entries in
    order; raises ModelSpecError on a bad entry or a name served twice."""
    s = settings
    single = {"model", "model_dir", "scoring", "artifact"} & s.model_fields_set
    specs: list[ModelSpec] = []
    if single or not s.models:
        if s.model_dir is not None:
            name = s.model if "model" in single else Path(s.model_dir).expanduser().name
            specs.append(ModelSpec(name, s.model_dir, "directory"))
        else:
            specs.append(ModelSpec(s.model, s.model, "backbone", s.scoring, s.artifact))
    specs.extend(parse_spec(entry) for entry in s.models)
    seen: dict[str, ModelSpec] = {}
    for spec in specs:
        if spec.name in seen:
            raise ModelSpecError(
                f"model name {spec.name!r} is served twice ({seen[spec.name].describe()} and "
                f"{spec.describe()}); give each model its own name"
            )
        seen[spec.name] = spec
    return specs
