"""Dense pseudo-relevance feedback as a zero-training step after the MiniLM's full plan (issue #16; results:
docs/results.md, "Dense feedback"). Not part of the service: it measures, before anything is built, whether
moving the query embedding towards the best candidates (Rocchio on the layer-6 mean-pooled embeddings the
split-pair model already holds) re-ranks better than the served fusion.

On the first judged queries of four non-DL collections (BM25 top-k over the corpus), the full plan's key
(0.7 z-cosine + 0.3 z-BM25) ranks the candidates; the query embedding q becomes unit(q + beta * mean of the
top `k` candidates' unit embeddings), every candidate's cosine to it is taken and fused with BM25 as before.
nDCG@10 per collection and their mean, against the served fusion.

    .venv/bin/python scripts/probes/dense_feedback.py --queries 100 --top-k 30
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from fused_table import CandidateScorer, collect_scores, sums_table, zscores
from late_interaction import PASSAGE_TOKENS, QUERY_TOKENS, Encoder

# (feedback depth k, weight beta) of each variant, stored after [bm25, cosine] per candidate
VARIANTS = ((3, 0.5), (3, 1.0), (5, 0.5), (5, 1.0), (10, 0.5), (10, 1.0))


def weights(bm25: float, cos: float, variant: int | None = None) -> tuple[float, ...]:
    """Weights over the stored scores: BM25, the cosine, and 0.7 on one feedback variant if given."""
    moved = tuple(0.7 if i == variant else 0.0 for i in range(len(VARIANTS)))
    return (bm25, cos, *moved)


SUMS = {"BM25": weights(1.0, 0.0), "0.7 cos + 0.3 BM25 (the full plan)": weights(0.3, 0.7)}
SUMS |= {f"feedback k={k}, beta={b}, fused": weights(0.3, 0.0, i) for i, (k, b) in enumerate(VARIANTS)}
ORDER = tuple(range(len(VARIANTS) + 2))


def feedback(
    query: torch.Tensor, passages: torch.Tensor, first: list[float], k: int, beta: float
) -> list[float]:
    """Cosines of unit `passages` to the query moved towards the mean of the top `k` by `first`."""
    top = torch.tensor(first).topk(min(k, len(first))).indices
    moved = F.normalize(query + beta * passages[top].mean(dim=0), dim=-1)
    return (passages @ moved).tolist()


def scorer(encoder: Encoder) -> CandidateScorer:
    """Each candidate's [cosine, *cosines to the moved query of every variant]."""

    def scores(query: str, passages: list[str], bm25: list[float]) -> list[list[float]]:
        q_mean, _, _ = encoder.encode([query], QUERY_TOKENS)
        p_mean, _, _ = encoder.encode(passages, PASSAGE_TOKENS)
        cos = (p_mean @ q_mean[0]).tolist()
        first = [0.7 * c + 0.3 * b for c, b in zip(zscores(cos), zscores(bm25), strict=True)]
        moved = [feedback(q_mean[0], p_mean, first, k, beta) for k, beta in VARIANTS]
        return [[cos[i], *(m[i] for m in moved)] for i in range(len(passages))]

    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--top-k", type=int, default=30)
    parser.add_argument("--scores", type=Path, default=Path("out/feedback/scores.json"))
    args = parser.parse_args()
    args.scores.parent.mkdir(parents=True, exist_ok=True)
    found = collect_scores(args.scores, args.data, args.queries, args.top_k, scorer(Encoder()))
    sums_table(found, args.data, SUMS, ORDER)


if __name__ == "__main__":
    main()
