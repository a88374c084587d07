"""What the sync and asyncio clients share: channel options, metadata and timeout defaults."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

MetadataValue: TypeAlias = str | bytes
MetadataInput: TypeAlias = Mapping[str, MetadataValue] | Sequence[tuple[str, MetadataValue]]
"""Call metadata: a mapping or (key, value) pairs; keys lowercase, `-bin` keys take bytes."""

# Responses that echo documents can pass gRPC's 4 MiB default; the server bounds what it sends.
DEFAULT_CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
)


def channel_options(options: Sequence[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """The defaults, overridden by the caller's options of the same name."""
    given = {name for name, _ in options}
    return [o for o in DEFAULT_CHANNEL_OPTIONS if o[0] not in given] + list(options)


def metadata_pairs(metadata: MetadataInput | None) -> tuple[tuple[str, MetadataValue], ...]:
    """Metadata as the (key, value) pairs grpc takes."""
    if metadata is None:
        return ()
    items = metadata.items() if isinstance(metadata, Mapping) else metadata
    return tuple((str(k), v) for k, v in items)


class CallDefaults:
    """A client's default timeout and metadata, merged into every call's own."""

    def __init__(self, timeout: float | None, metadata: MetadataInput | None) -> None:
        self.timeout = timeout
        self.metadata = metadata_pairs(metadata)

    def timeout_for(self, timeout: float | None) -> float | None:
        """The call's timeout, or the client's."""
        return timeout if timeout is not None else self.timeout

    def metadata_for(self, metadata: MetadataInput | None) -> tuple[tuple[str, MetadataValue], ...] | None:
        """The client's metadata followed by the call's (None when there is none)."""
        merged = self.metadata + metadata_pairs(metadata)
        return merged or None
