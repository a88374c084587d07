"""Ranking losses over groups of candidates (positive first): paper eq. 3 and eq. 9, and listwise KD.

All take logits shaped (groups, candidates).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def contrastive(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Eq. 3: -log softmax of the positive (index 0) over its group."""
    target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits / temperature, target)


def distill(student: Tensor, teacher: Tensor, temperature: float = 1.0) -> Tensor:
    """One term of eq. 9: cross-entropy of the student's group softmax against the (detached) teacher's."""
    target = torch.softmax(teacher.detach() / temperature, dim=-1)
    return -(target * torch.log_softmax(student / temperature, dim=-1)).sum(dim=-1).mean()


def committee(student: Tensor, teachers: Sequence[Tensor], temperature: float = 1.0) -> Tensor:
    """Eq. 9 for one student: the mean of its distillation terms over the teachers that dominate it."""
    if not teachers:
        return student.new_zeros(())
    return torch.stack([distill(student, t, temperature) for t in teachers]).mean()


def listwise(student: Tensor, teacher: Tensor, temperature: float = 1.0) -> Tensor:
    """ListNet-style KL from a teacher ranking's scores to the student (Rank-DistiLLM's listwise loss)."""
    target = torch.softmax(teacher.detach() / temperature, dim=-1)
    return F.kl_div(torch.log_softmax(student / temperature, dim=-1), target, reduction="batchmean")
