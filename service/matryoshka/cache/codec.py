"""Cache entry codecs: versioned header + checksum + payload. Never pickle.

Row states: b"MTRS" | version (1 byte) | sha256 of payload (32 bytes) | safetensors bytes holding
`hidden` (its dtype and shape), `segments`, `token_ids`, `layer` and `compression`.
Scores: b"MTSC" | version | sha256 of payload | little-endian layer (u32), count (u32), then per scored
layer: layer (u32), logit (f64), FLOPs so far (f64).
Any corruption, truncation or version skew fails loudly with CodecError instead of resuming from a
wrong state; the cache treats such an entry as missing and overwrites it.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from matryoshka.engine.job import ScoredLayer
from matryoshka.model.state import RowState

MAGIC = b"MTRS"
VERSION = 2  # 2: rows carry their width compression factor (selects H-LoRA compensation)
_HEADER = len(MAGIC) + 1 + 32


class CodecError(ValueError):
    """Bytes that are not a valid encoded row state of this version."""


def encode_row(row: RowState, dtype: torch.dtype | None = None) -> bytes:
    """Serialise one row state (tensors are copied to CPU; hidden states cast to `dtype` if given)."""
    hidden = row.hidden.detach().cpu()
    payload = save(
        {
            "hidden": (hidden if dtype is None else hidden.to(dtype)).contiguous(),
            "segments": row.segments.detach().cpu().contiguous(),
            "token_ids": row.token_ids.detach().cpu().contiguous(),
            "layer": torch.tensor([row.layer], dtype=torch.int64),
            "compression": torch.tensor([row.compression], dtype=torch.float32),
        }
    )
    return MAGIC + bytes([VERSION]) + hashlib.sha256(payload).digest() + payload


def decode_row(blob: bytes) -> RowState:
    """Deserialise bytes made by encode_row, verifying magic, version and checksum."""
    if len(blob) < _HEADER or blob[: len(MAGIC)] != MAGIC:
        raise CodecError("not an encoded row state (bad magic)")
    version = blob[len(MAGIC)]
    if version != VERSION:
        raise CodecError(f"row state codec version {version}, this build reads {VERSION}")
    digest, payload = blob[len(MAGIC) + 1 : _HEADER], blob[_HEADER:]
    if hashlib.sha256(payload).digest() != digest:
        raise CodecError("row state checksum mismatch (corrupt or truncated)")
    try:
        tensors = load(payload)
        layer = int(tensors["layer"].item())
        compression = float(tensors["compression"].item())
    except (SafetensorError, KeyError, ValueError, RuntimeError) as exc:
        raise CodecError(f"unreadable row state payload: {exc}") from exc
    return RowState(
        hidden=tensors["hidden"],
        segments=tensors["segments"],
        token_ids=tensors["token_ids"],
        layer=layer,
        compression=compression,
    )


SCORES_MAGIC = b"MTSC"
SCORES_VERSION = 1
_COUNT = struct.Struct("<II")
_SCORE = struct.Struct("<Idd")


def encode_scores(layer: int, scores: Mapping[int, ScoredLayer]) -> bytes:
    """Serialise one row's scores (by layer) for its entry at `layer`."""
    body = [_COUNT.pack(layer, len(scores))]
    body += [_SCORE.pack(at, s.logit, s.flops) for at, s in sorted(scores.items())]
    payload = b"".join(body)
    return SCORES_MAGIC + bytes([SCORES_VERSION]) + hashlib.sha256(payload).digest() + payload


def decode_scores(blob: bytes) -> tuple[int, dict[int, ScoredLayer]]:
    """The entry's layer and its scores by layer, verifying magic, version, checksum and length."""
    if len(blob) < _HEADER + _COUNT.size or blob[: len(SCORES_MAGIC)] != SCORES_MAGIC:
        raise CodecError("not an encoded scores entry (bad magic or too short)")
    if blob[len(SCORES_MAGIC)] != SCORES_VERSION:
        raise CodecError(f"scores codec version {blob[len(SCORES_MAGIC)]}, this build reads {SCORES_VERSION}")
    digest, payload = blob[len(SCORES_MAGIC) + 1 : _HEADER], blob[_HEADER:]
    if hashlib.sha256(payload).digest() != digest:
        raise CodecError("scores checksum mismatch (corrupt or truncated)")
    layer, count = _COUNT.unpack_from(payload)
    if len(payload) != _COUNT.size + count * _SCORE.size:
        raise CodecError("scores entry length does not match its count")
    scores = {}
    for i in range(count):
        at, logit, flops = _SCORE.unpack_from(payload, _COUNT.size + i * _SCORE.size)
        scores[at] = ScoredLayer(logit, flops)
    return layer, scores
