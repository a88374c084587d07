"""Late interaction as a zero-training feature of the MiniLM's full plan (issue #16; results: docs/results.md,
"Late interaction"). Not part of the service: it measures, before anything is built, whether the token
states the split-pair model already computes at layer 6 rank better than their mean.

On the first judged queries of four non-DL collections (BM25 top-k over the corpus), every candidate gets
BM25, the bi-encoder's cosine of the mean-pooled sides (what `full` serves with BM25) and MaxSim: for
each query token the best cosine over the passage tokens, averaged over the query tokens (ColBERT's
operator, here on the untrained all-MiniLM-L6-v2 token states). Per query each score is z-normalised and
the weighted sums are ranked; nDCG@10 per collection and their mean.

    .venv/bin/python scripts/probes/late_interaction.py --queries 100 --top-k 30
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from fused_table import CandidateScorer, collect_scores, sums_table

from matryoshka.engine.dtype import DTYPES, choose_dtype
from matryoshka.model.loading import load_backbone

# (cosine, maxsim, BM25) weights of the per-query z-scores; ORDER: where each is stored per candidate
ORDER = (1, 2, 0)
SUMS = {
    "BM25": (0.0, 0.0, 1.0),
    "cos": (1.0, 0.0, 0.0),
    "maxsim": (0.0, 1.0, 0.0),
    "0.7 cos + 0.3 BM25 (the full plan)": (0.7, 0.0, 0.3),
    "cos + maxsim": (1.0, 1.0, 0.0),
    "0.5 cos + 0.2 maxsim + 0.3 BM25": (0.5, 0.2, 0.3),
    "0.35 cos + 0.35 maxsim + 0.3 BM25": (0.35, 0.35, 0.3),
    "0.2 cos + 0.5 maxsim + 0.3 BM25": (0.2, 0.5, 0.3),
    "0.7 maxsim + 0.3 BM25": (0.0, 0.7, 0.3),
}
PASSAGE_TOKENS = 192
QUERY_TOKENS = 64


class Encoder:
    """all-MiniLM-L6-v2's last-layer token states, one side at a time (no [CLS]/[SEP] in MaxSim)."""

    def __init__(self) -> None:
        dtype = DTYPES[choose_dtype("auto", "cpu").name]
        loaded = load_backbone("minilm-l6", dtype=dtype)
        self.model, self.tokenizer = loaded.model, loaded.tokenizer

    @torch.inference_mode()
    def encode(self, texts: list[str], limit: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(unit mean-pooled embeddings [n, h], unit token states [n, t, h], content mask [n, t])."""
        batch = self.tokenizer(texts, truncation=True, max_length=limit, padding=True, return_tensors="pt")
        states = self.model(**batch).last_hidden_state.float()
        mask = batch["attention_mask"].bool()
        mean = (states * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        content = mask.clone()
        content[:, 0] = False
        content[torch.arange(len(texts)), mask.sum(1) - 1] = False
        return F.normalize(mean, dim=-1), F.normalize(states, dim=-1), content


def maxsim(
    query: torch.Tensor, qmask: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Mean over the query's content tokens of the best cosine over each passage's content tokens."""
    sims = torch.einsum("qh,nth->nqt", query, tokens).masked_fill(~mask[:, None, :], -2.0)
    best = sims.max(dim=-1).values[:, qmask]
    return best.mean(dim=-1)


def scorer(encoder: Encoder) -> CandidateScorer:
    """Each candidate's [cosine, MaxSim] to the query."""

    def scores(query: str, passages: list[str], bm25: list[float]) -> list[list[float]]:
        q_mean, q_tokens, q_mask = encoder.encode([query], QUERY_TOKENS)
        p_mean, p_tokens, p_mask = encoder.encode(passages, PASSAGE_TOKENS)
        cos = (p_mean @ q_mean[0]).tolist()
        late = maxsim(q_tokens[0], q_mask[0], p_tokens, p_mask).tolist()
        return [[c, m] for c, m in zip(cos, late, strict=True)]

    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--top-k", type=int, default=30)
    parser.add_argument("--scores", type=Path, default=Path("out/late/scores.json"))
    args = parser.parse_args()
    args.scores.parent.mkdir(parents=True, exist_ok=True)
    found = collect_scores(args.scores, args.data, args.queries, args.top_k, scorer(Encoder()))
    sums_table(found, args.data, SUMS, ORDER)


if __name__ == "__main__":
    main()
