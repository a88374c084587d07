"""Windows of long documents: a document's tokens cut into overlapping windows, each with its span in
the document's text, so that every window can be scored as a passage of its own (MaxP / FirstP).

A document is tokenised once with the fast tokenizer's offset mapping; its token ids are cut into
windows of `window_tokens` with a stride of `window_tokens - overlap_tokens`; each window's text is
`text[start:end]`, from its first token's start to its last token's end (the first window starts at 0,
the last ends at the end of the text, so the windows cover the document). A window is then encoded as
that text would be as a document (the template's own layout), so a short document chunked is the same
pair as unchunked and the cache keys windows by their tokens like any row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

Aggregate = Literal["max", "first", "mean"]


@dataclass(frozen=True)
class Chunking:
    """How documents are split: tokens per window, tokens shared with the previous one, aggregation."""

    window_tokens: int
    overlap_tokens: int = 0
    aggregate: Aggregate = "max"

    def __post_init__(self) -> None:
        if self.window_tokens < 1:
            raise ValueError(f"window_tokens must be >= 1, got {self.window_tokens}")
        if not 0 <= self.overlap_tokens < self.window_tokens:
            raise ValueError(f"overlap_tokens must be within 0..{self.window_tokens - 1}")

    @property
    def stride(self) -> int:
        """Tokens from one window's start to the next one's."""
        return self.window_tokens - self.overlap_tokens

    def count(self, tokens: int) -> int:
        """Windows a document of `tokens` tokens is split into (at least 1)."""
        if tokens <= self.window_tokens:
            return 1
        return math.ceil((tokens - self.window_tokens) / self.stride) + 1


@dataclass(frozen=True)
class Window:
    """One row of a chunked request: window `index` of `count` of document `document`, whose text is
    the document's [start, end) in code points (Python string indices)."""

    document: int
    index: int
    count: int
    start: int
    end: int


def split(tokenizer: Any, texts: list[str], chunking: Chunking) -> list[list[Window]]:
    """Every document's windows (only the first with aggregate "first"); needs a fast tokenizer."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("chunking needs a fast tokenizer (one with an offset mapping)")
    encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True) if texts else None
    out: list[list[Window]] = []
    for d, text in enumerate(texts):
        assert encoded is not None
        offsets: list[tuple[int, int]] = list(encoded["offset_mapping"][d])
        count = chunking.count(len(offsets))
        runs = 1 if chunking.aggregate == "first" else count
        windows = []
        for i in range(runs):
            first = i * chunking.stride
            last = min(first + chunking.window_tokens, len(offsets)) - 1
            start = 0 if i == 0 else offsets[first][0]
            end = len(text) if i == count - 1 or not offsets else offsets[last][1]
            windows.append(Window(d, i, count, start, end))
        out.append(windows)
    return out
