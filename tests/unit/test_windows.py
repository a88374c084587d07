"""Windows of long documents: spans map back to the exact text, windows overlap as asked, and a
window is encoded as its text would be as a document."""

from __future__ import annotations

import itertools

import pytest
from transformers import PreTrainedTokenizerFast

from matryoshka.model.matryoshka_model import MatryoshkaModel
from matryoshka.model.prompt import Truncation
from matryoshka.model.window import Chunking, split

# 20 words of the tiny vocabulary, one token each, separated by varied whitespace.
WORDS = (  # noqa: SIM905 - a word list reads best as prose
    "the cat sat on the mat dog ran park sun is hot star paris france capital city river water blue"
).split()
TEXT = "  " + " ".join(WORDS[:7]) + "\n\n" + "   ".join(WORDS[7:]) + " "


def test_count_is_the_windows_a_stride_needs() -> None:
    c = Chunking(window_tokens=4, overlap_tokens=1)
    assert c.stride == 3
    assert [c.count(n) for n in (0, 1, 4, 5, 7, 8, 10, 11)] == [1, 1, 1, 2, 2, 3, 3, 4]


@pytest.mark.parametrize(("window", "overlap"), [(4, 1), (5, 0), (6, 5), (25, 3)])
def test_windows_hold_the_token_windows_and_cover_the_text(
    tiny_tokenizer: PreTrainedTokenizerFast, window: int, overlap: int
) -> None:
    chunking = Chunking(window, overlap)
    (windows,) = split(tiny_tokenizer, [TEXT], chunking)
    stride = window - overlap
    assert len(windows) == chunking.count(len(WORDS))
    for i, w in enumerate(windows):
        assert (w.document, w.index, w.count) == (0, i, len(windows))
        assert TEXT[w.start : w.end].split() == WORDS[i * stride : i * stride + window]
    assert windows[0].start == 0
    assert windows[-1].end == len(TEXT)
    # consecutive windows share exactly `overlap` words (the last one may be shorter)
    for a, b in itertools.pairwise(windows):
        assert TEXT[b.start : b.end].split()[:overlap] == TEXT[a.start : a.end].split()[stride:]


def test_first_keeps_only_the_first_window_but_counts_them_all(
    tiny_tokenizer: PreTrainedTokenizerFast,
) -> None:
    (windows,) = split(tiny_tokenizer, [TEXT], Chunking(8, 2, "first"))
    assert len(windows) == 1
    assert windows[0].count == Chunking(8, 2).count(len(WORDS)) == 3
    assert TEXT[windows[0].start : windows[0].end].split() == WORDS[:8]


def test_offsets_are_code_points(tiny_tokenizer: PreTrainedTokenizerFast) -> None:
    """Text before a word in multi-byte characters shifts offsets by characters, not bytes."""
    text = "éé ünïcode " + " ".join(WORDS)
    (windows,) = split(tiny_tokenizer, [text], Chunking(5, 0))
    assert text[windows[1].start : windows[1].end].split() == WORDS[3:8]  # 2 [UNK] words come first


def test_chunking_rejects_what_cannot_window() -> None:
    with pytest.raises(ValueError, match="window_tokens"):
        Chunking(0)
    with pytest.raises(ValueError, match="overlap_tokens"):
        Chunking(4, 4)


def test_a_window_is_the_pair_its_text_makes(llama_model: MatryoshkaModel) -> None:
    query = "what is the capital of france"
    short = "paris is the capital"
    pairs, windows = llama_model.encode_windows(query, [TEXT, short], Truncation(), Chunking(6, 2))
    assert [w.document for w in windows].count(1) == 1
    assert windows[-1].start == 0
    assert windows[-1].end == len(short)
    texts = [[TEXT, short][w.document][w.start : w.end] for w in windows]
    assert pairs == llama_model.encode(query, texts, Truncation(max_passage_tokens=10_000))
    # a short document chunked is exactly the pair it makes unchunked
    assert pairs[-1] == llama_model.encode(query, [short], Truncation())[0]
