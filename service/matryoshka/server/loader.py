"""Load every served model at start-up, each under its served name; any model that cannot load stops
the start-up with a ModelSpecError naming it (never a request-time failure)."""

from __future__ import annotations

import logging
from pathlib import Path

from matryoshka.engine.reranker import Reranker
from matryoshka.model.loading import BACKBONES
from matryoshka.server.model_specs import ModelSpec, ModelSpecError, served_specs
from matryoshka.server.settings import Settings

log = logging.getLogger("matryoshka.server")


def load_model(spec: ModelSpec, settings: Settings) -> Reranker:
    """One served model, named `spec.name`, in the server's dtype, device and threads."""
    s = settings
    try:
        if spec.kind == "directory":
            reranker = Reranker.from_checkpoint(
                Path(spec.source).expanduser(),
                name=spec.name,
                dtype=s.dtype,
                device=s.device,
                threads=s.threads,
            )
        elif spec.source not in BACKBONES:
            raise ModelSpecError(
                f"unknown backbone {spec.source!r}; packaged: {', '.join(sorted(BACKBONES))} "
                "(write a checkpoint directory as a path: ./NAME or /abs/NAME)"
            )
        else:
            reranker = Reranker.load(
                spec.source,
                dtype=s.dtype,
                scoring=spec.scoring,
                threads=s.threads,
                artifact=spec.artifact,
                device=s.device,
            )
    except (ValueError, OSError, KeyError) as exc:
        raise ModelSpecError(f"cannot serve model {spec.name!r} ({spec.describe()}): {exc}") from exc
    reranker.model.name = spec.name
    return reranker


def load_models(settings: Settings) -> dict[str, Reranker]:
    """Every served model by name, the default first, loaded and warmed."""
    served: dict[str, Reranker] = {}
    for spec in served_specs(settings):
        log.info("loading model %s", spec.describe())
        reranker = load_model(spec, settings)
        reranker.warmup()
        served[spec.name] = reranker
    return served
