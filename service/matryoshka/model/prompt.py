"""Prompt templates: how a (query, passage) pair becomes token ids with a segment for every token."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from matryoshka.model.state import Segment

TruncateSide = Literal["end", "start"]


class Tokenizer(Protocol):
    """The slice of a Hugging Face tokenizer the templates use."""

    def __call__(self, text: list[str], *, add_special_tokens: bool) -> dict[str, list[list[int]]]: ...


@dataclass(frozen=True)
class Truncation:
    """Token limits per part; `side` says which end of an over-long text is cut."""

    max_query_tokens: int = 64
    max_passage_tokens: int = 192
    side: TruncateSide = "end"

    def cut(self, ids: list[int], limit: int) -> list[int]:
        """Cut ids to at most `limit`, dropping from `side`."""
        if len(ids) <= limit:
            return ids
        return ids[:limit] if self.side == "end" else ids[len(ids) - limit :]


@dataclass(frozen=True)
class EncodedPair:
    """Token ids of one pair, a Segment per token, and BERT token types (zeros for decoders)."""

    input_ids: list[int]
    segments: list[int]
    token_types: list[int]


class PromptTemplate:
    """A template renders fixed text around the query and passage; `version` enters cache keys."""

    name: str = "template"
    version: str = "1"

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer

    def _ids(self, texts: list[str]) -> list[list[int]]:
        return list(self.tokenizer(texts, add_special_tokens=False)["input_ids"])

    def encode(self, query: str, passages: list[str], truncation: Truncation) -> list[EncodedPair]:
        """Encode one query against many passages."""
        (q_ids,) = self._ids([query])
        q_ids = truncation.cut(q_ids, truncation.max_query_tokens)
        p_all = self._ids(passages) if passages else []
        return [self.assemble(q_ids, truncation.cut(p, truncation.max_passage_tokens)) for p in p_all]

    def assemble(self, query_ids: list[int], passage_ids: list[int]) -> EncodedPair:
        """Lay out already-truncated query and passage ids with the template's fixed parts."""
        raise NotImplementedError


class _PiecewiseTemplate(PromptTemplate):
    """Template text pieces tokenised once; parts are ("text", str) or ("query"|"passage", None)."""

    parts: tuple[tuple[str, str | None], ...] = ()

    def __init__(self, tokenizer: Tokenizer) -> None:
        super().__init__(tokenizer)
        texts = [t for kind, t in self.parts if kind == "text" and t is not None]
        self._text_ids = dict(zip(texts, self._ids(texts), strict=True))

    def assemble(self, query_ids: list[int], passage_ids: list[int]) -> EncodedPair:
        ids: list[int] = []
        segs: list[int] = []
        for kind, text in self.parts:
            if kind == "query":
                piece, seg = query_ids, Segment.QUERY
            elif kind == "passage":
                piece, seg = passage_ids, Segment.PASSAGE
            else:
                assert text is not None
                piece, seg = self._text_ids[text], Segment.PROMPT
            ids.extend(piece)
            segs.extend([int(seg)] * len(piece))
        return EncodedPair(input_ids=ids, segments=segs, token_types=[0] * len(ids))


class RelevancePrompt(_PiecewiseTemplate):
    """Paper eq. 1: "A: {query}\\nB: {passage}\\n{instruction}"; the last token scores "Yes"."""

    name = "relevance"
    version = "relevance-v1"
    parts = (
        ("text", "A: "),
        ("query", None),
        ("text", "\nB: "),
        ("passage", None),
        ("text", "\nPredict whether passage B contains an answer to query A. Answer Yes or No."),
    )


class QueryLikelihoodPrompt(_PiecewiseTemplate):
    """Zero-shot UPR layout: the passage first, then the query whose likelihood is the score."""

    name = "query_likelihood"
    version = "query-likelihood-v1"
    parts = (
        ("text", "Passage: "),
        ("passage", None),
        ("text", "\nPlease write a question based on this passage.\nQuestion:"),
        ("query", None),
    )

    def encode(self, query: str, passages: list[str], truncation: Truncation) -> list[EncodedPair]:
        # A leading space makes the query tokenise as it would after "Question:" in running text.
        return super().encode(" " + query.strip(), passages, truncation)


class EncoderPairPrompt(PromptTemplate):
    """BERT cross-encoder layout: [CLS] query [SEP] passage [SEP], token types 0 then 1."""

    name = "encoder_pair"
    version = "encoder-pair-v1"

    def __init__(self, tokenizer: Tokenizer, cls_id: int, sep_id: int) -> None:
        super().__init__(tokenizer)
        self.cls_id = cls_id
        self.sep_id = sep_id

    def assemble(self, query_ids: list[int], passage_ids: list[int]) -> EncodedPair:
        ids = [self.cls_id, *query_ids, self.sep_id, *passage_ids, self.sep_id]
        segs = (
            [int(Segment.PROMPT)]
            + [int(Segment.QUERY)] * len(query_ids)
            + [int(Segment.PROMPT)]
            + [int(Segment.PASSAGE)] * len(passage_ids)
            + [int(Segment.PROMPT)]
        )
        types = [0] * (len(query_ids) + 2) + [1] * (len(passage_ids) + 1)
        return EncodedPair(input_ids=ids, segments=segs, token_types=types)
