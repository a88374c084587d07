"""Documents made of windows (chunking): exits decided on documents, outcomes one per document.

With chunking a job's rows are windows (model/window.py) and a document's probability aggregates its
windows' latest ones: the best ("max"; "first" has one window) or the sigmoid of the mean calibrated
logit ("mean"). The request's exit schedule is asked about documents, as it would be without
chunking, and a document's decision stops all its running windows: one confidently relevant window
decides its document (its other windows stop), a document whose best window is confidently
irrelevant stops whole, the cascade compares documents with the n-th best document, and STABLE
watches the top-n set of documents. Under "max" a window also stops alone where it can no longer
matter: confidently irrelevant, or unable (by the cascade's margin) to lift its document to the
n-th best. Under "mean" every window counts, so windows stop only with their document.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from matryoshka.engine.exits import (
    ConfidencePolicy,
    Decisions,
    ExitReason,
    ExitSchedule,
    Standing,
    TopNCascade,
)
from matryoshka.engine.job import Outcome
from matryoshka.model.window import Aggregate, Window

_EPS = 1e-12


def calibrated_logits(probs: Tensor) -> Tensor:
    """log(p / (1 - p)), finite even at 0 and 1."""
    p = probs.clamp(_EPS, 1 - _EPS)
    return torch.log(p) - torch.log1p(-p)


class Grouping:
    """Which document each row (window) belongs to, and how window scores make a document's."""

    def __init__(self, windows: Sequence[Window], documents: int, aggregate: Aggregate) -> None:
        self.windows = list(windows)
        self.aggregate = aggregate
        members: list[list[int]] = [[] for _ in range(documents)]
        for row, w in enumerate(self.windows):
            members[w.document].append(row)
        if any(not rows for rows in members):
            raise ValueError("every document needs at least one window")
        self.rows = [torch.tensor(rows, dtype=torch.long) for rows in members]

    @property
    def documents(self) -> int:
        """Documents in the job."""
        return len(self.rows)

    def _aggregate(self, probs: Tensor) -> float:
        """One document's probability from its scored windows' probabilities (NaN if none)."""
        if probs.numel() == 0:
            return math.nan
        if self.aggregate == "mean":
            return float(torch.sigmoid(calibrated_logits(probs).mean()))
        return float(probs.max())

    def probabilities(self, probs: Tensor) -> Tensor:
        """(documents,) each document's aggregate of its windows' latest probabilities."""
        out = torch.full((self.documents,), math.nan, dtype=torch.float64)
        for d, rows in enumerate(self.rows):
            p = probs[rows]
            out[d] = self._aggregate(p[~torch.isnan(p)])
        return out

    def layers(self, exit_layers: Tensor) -> Tensor:
        """(documents,) each document's latest scored layer: the deepest of its windows' (0 if none)."""
        return torch.stack([exit_layers[rows].max() for rows in self.rows])

    def decide(
        self,
        schedule: ExitSchedule,
        layer: int,
        probs: Tensor,
        active: Tensor,
        rank: Callable[[Tensor], Standing] | None = None,
    ) -> Decisions:
        """Row decisions at `layer`: the schedule's decisions on documents (ranked for the cascade by the
        standing `rank` gives their probabilities, see engine/exits.py), applied to their running
        windows, then (under "max") windows that stop alone."""
        doc_probs = self.probabilities(probs)
        doc_active = torch.tensor([bool(active[rows].any()) for rows in self.rows], dtype=torch.bool)
        standing = rank(doc_probs) if rank is not None else None
        out: Decisions = {}
        for d, reason in schedule.decide(layer, doc_probs, doc_active, standing).items():
            for r in self.rows[d].tolist():
                if active[r]:
                    out[r] = reason
        if self.aggregate != "mean":
            for r, reason in self._alone(
                schedule, layer, probs, active, doc_probs, fused=standing is not None
            ).items():
                out.setdefault(r, reason)
        return out

    @staticmethod
    def _alone(
        schedule: ExitSchedule, layer: int, probs: Tensor, active: Tensor, doc_probs: Tensor, fused: bool
    ) -> Decisions:
        """Windows that cannot change their document's max: confidently irrelevant ones, and (unless
        documents are ranked fused with the first stage, where only whole documents drop) those whose
        probability plus the cascade's margin is below the n-th best document."""
        out: Decisions = {}
        for policy in schedule.policies:
            if isinstance(policy, ConfidencePolicy):
                c = policy.config
                if c.irrelevant is not None and layer >= c.min_layer:
                    for i in (active & (probs <= c.irrelevant)).nonzero().flatten():
                        out.setdefault(int(i), ExitReason.CONFIDENT_IRRELEVANT)
            elif isinstance(policy, TopNCascade) and not fused:
                k = policy.config
                scored = doc_probs[~torch.isnan(doc_probs)]
                if layer < k.min_layer or scored.numel() <= k.top_n:
                    continue
                threshold = float(torch.topk(scored, k.top_n).values[-1])
                for i in (active & ~torch.isnan(probs) & (probs + k.margin < threshold)).nonzero().flatten():
                    out.setdefault(int(i), ExitReason.CASCADE)
        return out

    def outcomes(self, rows: Sequence[Outcome]) -> list[Outcome]:
        """One outcome per document: its aggregate score, with the exit layer, reason and window of
        its best-scoring window; running (reason None) while any of its windows runs."""
        out = []
        for d, members in enumerate(self.rows):
            windows = [rows[r] for r in members.tolist()]
            scored = [o for o in windows if not math.isnan(o.probability) and o.exit_layer > 0]
            best = max(scored, key=lambda o: (o.probability, -o.index)) if scored else windows[0]
            probability, logit = best.probability, best.logit
            if self.aggregate == "mean" and scored:  # each window's logit is already its calibrated one
                mean = torch.tensor([o.logit for o in scored], dtype=torch.float64).mean()
                logit = float(mean)
                probability = float(torch.sigmoid(mean))
            running = any(o.exit_reason is None for o in windows)
            out.append(
                Outcome(
                    index=d,
                    logit=logit,
                    probability=probability,
                    exit_layer=best.exit_layer,
                    exit_reason=None if running else best.exit_reason,
                    tokens=sum(o.tokens for o in windows),
                    window=self.windows[best.index],
                )
            )
        return out
