"""What every command shares: failing with a message and an exit code, width specs, the command line
recorded in artifacts, the default backbone and the options several commands take.

Nothing here imports torch at import time, so `matryoshka --help` answers at once."""

from __future__ import annotations

import shlex
import sys
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

if TYPE_CHECKING:
    from matryoshka.engine.plan import WidthTarget

ProgressOpt = Annotated[bool, typer.Option(help="tqdm progress bars on stderr.")]
ModelOpt = Annotated[str | None, typer.Option(help="Backbone (default: the shipped default backbone).")]


def backbone(name: str | None) -> str:
    """`name`, or the default backbone when none was given."""
    from matryoshka.engine.reranker import DEFAULT_BACKBONE

    return name or DEFAULT_BACKBONE


def fail(message: str, code: int = 2, cause: BaseException | None = None) -> NoReturn:
    """Print `message` on stderr and exit with `code` (2: bad input or data, 1: the server said no)."""
    typer.echo(message, err=True)
    raise typer.Exit(code) from cause


def parse_width(specs: list[str]) -> dict[int, WidthTarget]:
    """Parse LAYER:RATIO (e.g. 8:2) or LAYER:=LENGTH (e.g. 8:=128) width targets."""
    from matryoshka.engine.plan import WidthTarget

    width: dict[int, WidthTarget] = {}
    for spec in specs:
        layer, _, value = spec.partition(":")
        try:
            if value.startswith("="):
                width[int(layer)] = WidthTarget(length=int(value[1:]))
            else:
                width[int(layer)] = WidthTarget(ratio=float(value))
        except ValueError as exc:
            raise typer.BadParameter(f"width {spec!r}: use LAYER:RATIO or LAYER:=LENGTH") from exc
    return width


def command_line() -> str:
    """This invocation as a shell command (recorded in artifacts' provenance)."""
    return "matryoshka " + " ".join(shlex.quote(a) for a in sys.argv[1:])
