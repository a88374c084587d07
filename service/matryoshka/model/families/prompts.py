"""Prompt layouts of published re-rankers, laid out piece by piece with a Segment per token.

Fixed text is tokenised once; the query and passage are tokenised on their own, formatted as the
published code formats them before tokenising ("A: {query}", "B: {passage}" in the bge layouts; a
leading space after "<Query>:" in Qwen3's, which is where its byte-level BPE splits the single string).
"""

from __future__ import annotations

from collections.abc import Sequence

from matryoshka.model.prompt import EncodedPair, Tokenizer, Truncation, _PiecewiseTemplate
from matryoshka.model.state import Segment

# bge-reranker-v2-gemma / -minicpm-layerwise / -v2.5-gemma2-lightweight: the default task prompt.
BGE_PROMPT = (
    "Given a query A and a passage B, determine whether the passage contains an answer to the query "
    "by providing a prediction of either 'Yes' or 'No'."
)
# Qwen3-Reranker: system prompt, default instruction and the assistant turn with an empty think block.
QWEN3_SYSTEM = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
    'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
QWEN3_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
QWEN3_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


class LayoutPrompt(_PiecewiseTemplate):
    """A template whose pieces are given per instance, optionally after a BOS token id."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        parts: Sequence[tuple[str, str | None]],
        *,
        name: str,
        version: str,
        bos_id: int | None = None,
        query_format: str = " {}",
        passage_format: str = " {}",
    ) -> None:
        self.parts = tuple(parts)
        self.query_format = query_format
        self.passage_format = passage_format
        self.name = name
        self.version = version
        self.bos_id = bos_id
        super().__init__(tokenizer)

    def encode(self, query: str, passages: list[str], truncation: Truncation) -> list[EncodedPair]:
        passages = [self.passage_format.format(p.strip()) for p in passages]
        return super().encode(self.query_format.format(query.strip()), passages, truncation)

    def assemble(self, query_ids: list[int], passage_ids: list[int]) -> EncodedPair:
        pair = super().assemble(query_ids, passage_ids)
        if self.bos_id is None:
            return pair
        return EncodedPair(
            input_ids=[self.bos_id, *pair.input_ids],
            segments=[int(Segment.PROMPT), *pair.segments],
            token_types=[0, *pair.token_types],
        )


def bge_prompt(tokenizer: Tokenizer, bos_id: int | None, prompt: str = BGE_PROMPT) -> LayoutPrompt:
    """[bos] "A: {query}" "\\n" "B: {passage}" "\\n" prompt: FlagEmbedding's LLM re-ranker layout. As
    there, "B: {passage}" is one piece: the lightweight models compress all of it."""
    parts = (("query", None), ("text", "\n"), ("passage", None), ("text", "\n"), ("text", prompt))
    return LayoutPrompt(
        tokenizer,
        parts,
        name="bge",
        version="bge-reranker-v1",
        bos_id=bos_id,
        query_format="A: {}",
        passage_format="B: {}",
    )


def qwen3_prompt(tokenizer: Tokenizer, instruction: str = QWEN3_INSTRUCTION) -> LayoutPrompt:
    """Qwen3-Reranker's chat layout: system, "<Instruct>: ... <Query>: ... <Document>: ...", assistant."""
    parts = (
        ("text", QWEN3_SYSTEM),
        ("text", f"<Instruct>: {instruction}\n<Query>:"),
        ("query", None),
        ("text", "\n<Document>:"),
        ("passage", None),
        ("text", QWEN3_SUFFIX),
    )
    return LayoutPrompt(tokenizer, parts, name="qwen3-reranker", version="qwen3-reranker-v1")
