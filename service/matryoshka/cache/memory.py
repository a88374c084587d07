"""The default store: a bounded in-process LRU over encoded entries, sized in bytes."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence


class MemoryStore:
    """Least recently used entries go first once the stored bytes pass `max_bytes`; thread-safe."""

    def __init__(self, max_bytes: int = 512 << 20) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be > 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def num_bytes(self) -> int:
        """Bytes held now (values plus keys)."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """The values of `keys` (None where missing); hits become most recently used."""
        out: list[bytes | None] = []
        with self._lock:
            for key in keys:
                value = self._entries.get(key)
                if value is not None:
                    self._entries.move_to_end(key)
                out.append(value)
        return out

    def set_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        """Store entries, evicting the least recently used past the budget (one over it is dropped)."""
        with self._lock:
            for key, value in items:
                size = len(key) + len(value)
                old = self._entries.pop(key, None)
                if old is not None:
                    self._bytes -= len(key) + len(old)
                if size > self.max_bytes:
                    continue
                self._entries[key] = value
                self._bytes += size
                while self._bytes > self.max_bytes:
                    gone, data = self._entries.popitem(last=False)
                    self._bytes -= len(gone) + len(data)

    async def aget_many(self, keys: Sequence[str], large: bool = False) -> list[bytes | None]:
        """`get_many` for the async cache (in memory: no waiting)."""
        return self.get_many(keys)

    async def aset_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        """`set_many` for the async cache."""
        self.set_many(items)
