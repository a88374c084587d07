"""Self-distillation of the depth lens: every lensed layer learns the last layer's next-token distribution.

The frozen backbone runs each training group once; the residual states at the positions that predict
query tokens are kept for every lensed layer and the last layer (`LensData`). Training then needs no
backbone compute: each translator minimises KL(p_last || p_layer) over the vocabulary at those
positions (the tuned-lens objective; the paper's eq. 9 distils the group softmax of the same forward
pass, this distils the full token distribution the group scores are made of). Per-layer query
likelihood on dev groups comes from the same cached states.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm import tqdm  # type: ignore[import-untyped]

from matryoshka.model.heads import QueryLikelihoodScorer, query_positions, row_means
from matryoshka.model.matryoshka_model import MatryoshkaModel
from matryoshka.model.prompt import Truncation
from matryoshka.train.groups import TrainingGroup
from matryoshka.train.structures import backbone_autocast

log = logging.getLogger(__name__)


@dataclass
class LensData:
    """Residual states at query-predicting positions, per layer, with each position's target and row."""

    hidden: dict[int, Tensor]  # layer -> (positions, hidden) bf16; includes the last layer
    targets: Tensor  # (positions,) the query token each position predicts
    rows: Tensor  # (positions,) index of the (group, candidate) row, group-major
    labels: Tensor  # (rows,) 1 for a group's positive, 0 otherwise
    group_size: int

    def save(self, file: Path) -> None:
        """Write to one safetensors file."""
        tensors = {f"hidden.{layer}": h.contiguous() for layer, h in self.hidden.items()}
        tensors |= {"targets": self.targets, "rows": self.rows, "labels": self.labels}
        tensors["group_size"] = torch.tensor([self.group_size])
        file.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, file)

    @staticmethod
    def load(file: Path) -> LensData:
        """Read what `save` wrote."""
        t = load_file(file)
        hidden = {int(k.split(".")[1]): v for k, v in t.items() if k.startswith("hidden.")}
        return LensData(hidden, t["targets"], t["rows"], t["labels"], int(t["group_size"][0]))


def collect(
    model: MatryoshkaModel,
    groups: Sequence[TrainingGroup],
    layers: Sequence[int],
    truncation: Truncation,
    *,
    bf16: bool = True,
    progress: bool = True,
) -> LensData:
    """Run the frozen backbone over every group (same size each) and keep the lens's inputs and targets."""
    backbone = model.backbone
    last = backbone.num_layers
    keep = sorted({*layers, last})
    sizes = {len(g.candidates) for g in groups}
    if len(sizes) != 1:
        raise ValueError(f"groups must all have the same size, got sizes {sorted(sizes)}")
    hidden: dict[int, list[Tensor]] = {layer: [] for layer in keep}
    targets, rows, labels = [], [], []
    offset = 0
    with torch.no_grad(), backbone_autocast(model, bf16):
        for g in tqdm(groups, desc="lens states", unit="group", disable=not progress):
            pairs = model.encode(g.query, [c.text for c in g.candidates], truncation)
            state = model.embed(pairs)
            at = query_positions(state)
            for layer in range(1, last + 1):
                state = backbone.forward_layer(layer, state)
                if layer in hidden:
                    hidden[layer].append(state.hidden[at.predicts].to(torch.bfloat16).cpu())
            targets.append(at.targets.cpu())
            rows.append(at.rows.cpu() + offset)
            labels.append(torch.tensor([c.label for c in g.candidates]))
            offset += state.batch_size
    return LensData(
        {layer: torch.cat(h) for layer, h in hidden.items()},
        torch.cat(targets),
        torch.cat(rows),
        torch.cat(labels),
        sizes.pop(),
    )


def fit_lens(
    scorer: QueryLikelihoodScorer,
    data: LensData,
    *,
    epochs: int = 4,
    batch_tokens: int = 256,
    lr: float = 1e-3,
    top_k: int = 32,
    seed: int = 13,
    progress: bool = True,
) -> list[float]:
    """Train every translator of `scorer.lens` on `data` (KL to the last layer); returns mean loss per epoch.

    The KL is taken over the batch's support: the union of every position's `top_k` teacher tokens and
    its target token, both distributions renormalised on it. That keeps the tokens the query
    likelihood is made of and costs |support| / vocabulary of the full softmax (about 1/15 here).
    """
    decoder = scorer.decoder
    last = decoder.num_layers
    lens = scorer.lens
    params = list(lens.parameters())
    for p in params:
        p.requires_grad_(True)
    optimiser = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    n = int(data.targets.shape[0])
    history = []
    for epoch in range(epochs):
        order = torch.randperm(n, generator=generator)
        total, batches, start = 0.0, 0, time.monotonic()
        bar = tqdm(range(0, n, batch_tokens), desc=f"lens epoch {epoch + 1}", disable=not progress)
        for i in bar:
            idx = order[i : i + batch_tokens]
            last_hidden = data.hidden[last][idx].float()
            support, teacher = teacher_support(scorer, last_hidden, data.targets[idx], top_k)
            loss = torch.zeros(())
            for layer in lens.layers:
                student = lens(layer, data.hidden[layer][idx].float())
                loss = loss + support_kl(scorer, student, support, teacher)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += loss.item() / len(lens.layers)
            batches += 1
            bar.set_postfix(kl=f"{total / batches:.3f}")
        history.append(total / max(1, batches))
        log.info("lens epoch %d: mean KL %.4f (%.0f s)", epoch + 1, history[-1], time.monotonic() - start)
    for p in params:
        p.requires_grad_(False)
    return history


def layer_scores(scorer: QueryLikelihoodScorer, data: LensData, layer: int, chunk: int = 1024) -> Tensor:
    """(rows,) mean log p(query | passage) of every cached row read at `layer` (through its lens)."""
    token_lp = []
    with torch.no_grad():
        for i in range(0, int(data.targets.shape[0]), chunk):
            h = scorer.lens(layer, data.hidden[layer][i : i + chunk].float())
            lp = torch.log_softmax(lm_logits(scorer, h), dim=-1)
            token_lp.append(lp.gather(1, data.targets[i : i + chunk].unsqueeze(1)).squeeze(1))
    return row_means(torch.cat(token_lp), data.rows, int(data.labels.shape[0]))


def teacher_support(
    scorer: QueryLikelihoodScorer, last_hidden: Tensor, targets: Tensor, top_k: int
) -> tuple[Tensor, Tensor]:
    """The support (every position's `top_k` tokens at the last layer, plus the targets) and the teacher's
    log-probabilities renormalised on it, (positions, |support|); no gradient."""
    with torch.no_grad():
        full = lm_logits(scorer, last_hidden)
        support = torch.unique(torch.cat([full.topk(top_k, dim=-1).indices.flatten(), targets]))
        return support, torch.log_softmax(full[:, support], dim=-1)


def support_kl(scorer: QueryLikelihoodScorer, hidden: Tensor, support: Tensor, teacher: Tensor) -> Tensor:
    """KL(teacher || read-out of `hidden`, already in the last layer's space) on the support, per position."""
    student = torch.log_softmax(lm_logits(scorer, hidden, support), dim=-1)
    return F.kl_div(student, teacher, log_target=True, reduction="batchmean")


def lm_logits(scorer: QueryLikelihoodScorer, hidden: Tensor, vocab: Tensor | None = None) -> Tensor:
    """fp32 LM-head logits of residual states (only the `vocab` columns when given); the matmul runs in
    the ambient autocast dtype (bf16 only where the caller measured it faster: a CPU without bf16 units
    runs it ~75x slower than fp32)."""
    decoder = scorer.decoder
    weight = decoder.lm_head.weight if vocab is None else decoder.lm_head.weight[vocab]
    normed: Tensor = decoder.norm(hidden.to(weight.dtype))
    logits: Tensor = normed @ weight.T
    return logits.float()
