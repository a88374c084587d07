"""What every checkpoint family shares: how it is built from a directory, and where its weights load."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from matryoshka.model.matryoshka_model import MatryoshkaModel


class UnsupportedCheckpointError(ValueError):
    """The directory is not a checkpoint of a supported family (or uses a variant no family serves)."""


@dataclass(frozen=True)
class CheckpointSource:
    """A Hugging Face-format directory to build from: its config.json, and where and how to load it."""

    directory: Path
    config: dict[str, Any]
    name: str
    dtype: torch.dtype
    device: torch.device
    fingerprint: str


Builder = Callable[[CheckpointSource], MatryoshkaModel]


@dataclass(frozen=True)
class Family:
    """A published re-ranker layout: the architectures it accepts and how it maps onto the engine."""

    name: str
    architectures: frozenset[str]
    build: Builder
    summary: str


def load_tokenizer(source: CheckpointSource) -> Any:
    """The checkpoint's own tokenizer, offline."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source.directory, local_files_only=True, trust_remote_code=False)


def finish(hf_model: Any, source: CheckpointSource) -> Any:
    """Evaluation mode, on the source's device."""
    return hf_model.eval().to(source.device)
