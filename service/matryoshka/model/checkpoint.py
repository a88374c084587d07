"""Bring your own re-ranker: load a published checkpoint family from a local Hugging Face directory.

The architecture named in config.json picks the family; its weights load by name into classes
implemented here or in transformers. Nothing is downloaded and no repository code is ever executed
(`trust_remote_code` stays off): an architecture not listed gets an error naming what is supported.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from matryoshka.model.families.base import CheckpointSource, Family
from matryoshka.model.families.base import UnsupportedCheckpointError as UnsupportedCheckpointError
from matryoshka.model.families.encoder import CROSS_ENCODER
from matryoshka.model.families.layerwise import LAYERWISE
from matryoshka.model.families.lightweight import LIGHTWEIGHT
from matryoshka.model.families.yes_logit import YES_LOGIT
from matryoshka.model.loading import sha256_file
from matryoshka.model.matryoshka_model import MatryoshkaModel

FAMILIES: tuple[Family, ...] = (CROSS_ENCODER, YES_LOGIT, LAYERWISE, LIGHTWEIGHT)
WEIGHT_SUFFIXES = (".safetensors", ".bin")


def supported_architectures() -> dict[str, str]:
    """Architecture name -> family name, for every architecture a directory may declare."""
    return {arch: family.name for family in FAMILIES for arch in sorted(family.architectures)}


def read_config(directory: Path) -> dict[str, Any]:
    """config.json of a checkpoint directory, or an UnsupportedCheckpointError saying what is missing."""
    path = directory / "config.json"
    if not directory.is_dir():
        raise UnsupportedCheckpointError(f"model directory {directory} does not exist")
    if not path.is_file():
        raise UnsupportedCheckpointError(f"{directory} has no config.json: not a Hugging Face checkpoint")
    config: dict[str, Any] = json.loads(path.read_text())
    return config


def family_of(config: dict[str, Any], directory: Path) -> Family:
    """The family that serves the architecture `config` declares."""
    architectures = config.get("architectures") or []
    for family in FAMILIES:
        if any(arch in family.architectures for arch in architectures):
            return family
    supported = ", ".join(f"{a} ({f})" for a, f in supported_architectures().items())
    raise UnsupportedCheckpointError(
        f"{directory}: unsupported architecture {architectures or 'none declared'}; supported: {supported}"
    )


def fingerprint(directory: Path) -> str:
    """sha256 over config.json and the sha256 of every weight file, in name order."""
    digest = hashlib.sha256((directory / "config.json").read_bytes())
    for path in sorted(p for p in directory.iterdir() if p.suffix in WEIGHT_SUFFIXES):
        digest.update(f"{path.name}:{sha256_file(path)}".encode())
    return digest.hexdigest()


def load_checkpoint(
    directory: str | Path,
    *,
    name: str | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> MatryoshkaModel:
    """Build a servable model from a checkpoint directory, in `dtype` on `device`, in eval mode."""
    path = Path(directory).expanduser()
    config = read_config(path)
    family = family_of(config, path)
    source = CheckpointSource(
        directory=path,
        config=config,
        name=name or path.name,
        dtype=dtype,
        device=torch.device(device),
        fingerprint=fingerprint(path),
    )
    return family.build(source)
