"""Frozen-backbone passes on disk (safetensors), so that later epochs, ablations and calibration cost no
backbone compute: pooled states per group (`FeatureCache`), and whole files keyed by the rows they were
computed from (`rows_key`, `load_keyed`, `save_keyed`)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from matryoshka.model.prompt import EncodedPair
from matryoshka.train.structures import PassOutput


class FeatureCache:
    """Pooled states of frozen-backbone passes, one safetensors file per group, valid for one identity
    (a hash of everything the passes depend on); a folder holding another identity is refused."""

    def __init__(self, root: Path, identity: str) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        stamp = root / "identity.txt"
        if stamp.is_file() and stamp.read_text().strip() != identity:
            raise ValueError(
                f"{root} holds passes of another model, data or configuration; use a new --workdir"
            )
        stamp.write_text(identity + "\n")
        self._memory: dict[int, PassOutput] = {}

    def _file(self, index: int) -> Path:
        return self.root / f"{index:06d}.safetensors"

    def has(self, index: int) -> bool:
        """Whether group `index` is cached."""
        return index in self._memory or self._file(index).is_file()

    def get(self, index: int) -> PassOutput | None:
        """The cached pass of group `index`, or None."""
        if index in self._memory:
            return self._memory[index]
        file = self._file(index)
        if not file.is_file():
            return None
        tensors = load_file(file)
        pooled = {}
        ql = None
        for key, value in tensors.items():
            if key == "query_likelihood":
                ql = value.float()
            else:
                s, layer = key.split("@")
                pooled[(int(s), int(layer))] = value.float()
        out = PassOutput(pooled, ql)
        self._memory[index] = out
        return out

    def put(self, index: int, out: PassOutput) -> None:
        """Store one group's pass (fp16 on disk, fp32 in memory)."""
        tensors = {f"{s}@{layer}": v.detach().half().contiguous() for (s, layer), v in out.pooled.items()}
        if out.query_likelihood is not None:
            tensors["query_likelihood"] = out.query_likelihood.detach().float().contiguous()
        tmp = self._file(index).with_suffix(".tmp")
        save_file(tensors, tmp)
        tmp.rename(self._file(index))
        self._memory[index] = PassOutput(
            {k: v.detach().half().float() for k, v in out.pooled.items()},
            None if out.query_likelihood is None else out.query_likelihood.detach().float(),
        )


def rows_key(identity: str, rows: Iterable[EncodedPair]) -> str:
    """sha256 of what a frozen pass over `rows` depends on: `identity` (the weights, and any setting that
    changes the pass) and every row's tokens."""
    digest = hashlib.sha256(identity.encode())
    for row in rows:
        digest.update(json.dumps(row.input_ids).encode())
    return digest.hexdigest()


def load_keyed(file: Path, key: str) -> dict[str, Tensor] | None:
    """The tensors `save_keyed` wrote to `file` under `key`, or None if there are none or another key's."""
    if not file.is_file():
        return None
    with safe_open(str(file), "pt") as stored:
        if (stored.metadata() or {}).get("rows") != key:
            return None
    return load_file(file)


def save_keyed(tensors: dict[str, Tensor], file: Path, key: str) -> None:
    """Write `tensors` to `file`, `key` in its metadata; renamed into place, so a kill leaves no half file."""
    file.parent.mkdir(parents=True, exist_ok=True)
    partial = file.with_suffix(".partial")
    save_file(tensors, partial, metadata={"rows": key})
    partial.replace(file)
