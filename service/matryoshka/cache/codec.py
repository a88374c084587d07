"""Row-state codec: versioned header + checksum + safetensors payload. Never pickle.

Layout: b"MTRS" | version (1 byte) | sha256 of payload (32 bytes) | safetensors bytes holding
`hidden`, `segments`, `token_ids`, `layer` and `compression`. Any corruption, truncation or
version skew fails loudly with CodecError instead of resuming from a wrong state.
"""

from __future__ import annotations

import hashlib

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from matryoshka.model.state import RowState

MAGIC = b"MTRS"
VERSION = 2  # 2: rows carry their width compression factor (selects H-LoRA compensation)
_HEADER = len(MAGIC) + 1 + 32


class CodecError(ValueError):
    """Bytes that are not a valid encoded row state of this version."""


def encode_row(row: RowState) -> bytes:
    """Serialise one row state (tensors are copied to CPU)."""
    payload = save(
        {
            "hidden": row.hidden.detach().cpu().contiguous(),
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
