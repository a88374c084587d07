"""Cache keys: sha256 over the model identity, the pair's token ids, the width schedule up to a layer
and the layer. Keys carry a Redis Cluster hash tag derived from the query, so one request's keys
share a slot (a cluster can answer its MGET in one call)."""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from matryoshka.model.matryoshka_model import ModelInfo
from matryoshka.model.prompt import EncodedPair
from matryoshka.model.state import Segment
from matryoshka.model.width import WidthTarget

KEY_VERSION = "1"  # bump when the key layout or the meaning of an entry changes
Kind = Literal["s", "h"]  # s: scores entry (small), h: hidden state entry


def _ids_bytes(ids: list[int]) -> bytes:
    return array("q", ids).tobytes()


@dataclass(frozen=True)
class KeySpace:
    """Everything besides the pair that decides what a cached state and score are."""

    fingerprint: str  # backbone weights + artifact (ModelInfo.fingerprint)
    calibration_version: str
    template_version: str
    scoring: str
    head_layers: tuple[int, ...]
    dtype: str  # the model's compute dtype
    state_dtype: str  # the dtype hidden states are stored in
    prefix: str = "mtr"
    digest: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        parts = (
            KEY_VERSION,
            self.fingerprint,
            self.calibration_version,
            self.template_version,
            self.scoring,
            ",".join(map(str, self.head_layers)),
            self.dtype,
            self.state_dtype,
        )
        object.__setattr__(self, "digest", hashlib.sha256("\x1f".join(parts).encode()).digest())

    @classmethod
    def of(cls, info: ModelInfo, dtype: str, state_dtype: str, prefix: str = "mtr") -> KeySpace:
        """The key space of a served model."""
        return cls(
            info.fingerprint,
            info.calibration_version,
            info.template_version,
            info.scoring,
            tuple(info.head_layers),
            dtype,
            state_dtype,
            prefix,
        )

    def pair(self, pair: EncodedPair) -> PairKeys:
        """Key maker for one pair: sha256 over this key space and the pair's token ids after
        truncation (with their segments); the hash tag hashes the query's ids alone."""
        query = [t for t, s in zip(pair.input_ids, pair.segments, strict=True) if s == Segment.QUERY]
        digest = hashlib.sha256(self.digest + _ids_bytes(pair.input_ids) + bytes(pair.segments)).digest()
        tag = hashlib.sha256(self.digest + _ids_bytes(query)).hexdigest()[:16]
        return PairKeys(f"{self.prefix}:{{{tag}}}", digest)


@dataclass(frozen=True)
class PairKeys:
    """The keys of one pair's entries."""

    head: str  # prefix and hash tag
    digest: bytes

    def key(self, width: Mapping[int, WidthTarget], layer: int, kind: Kind) -> str:
        """The key of the entry at `layer` under the width schedule's prefix up to and including it."""
        h = hashlib.sha256(self.digest)
        for at in sorted(w for w in width if w <= layer):
            h.update(f"|w{at}:{width[at].ratio!r}:{width[at].length!r}".encode())
        h.update(f"|l{layer}".encode())
        return f"{self.head}:{kind}:{h.hexdigest()}"
