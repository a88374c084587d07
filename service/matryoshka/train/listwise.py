"""Listwise distillation from a teacher's ranking (Rank-DistiLLM, Schlatt et al., ECIR 2025).

Groups come from a teacher's TREC run: per query, its top `hard` documents (the head of the ranking,
i.e. hard negatives, its first as the group's positive) plus `deep` documents sampled uniformly from its
ranks hard+1..max_rank ("deep sampling"). Every candidate carries the teacher's score, and the student (the
heads, optionally with a peft LoRA on the backbone) learns the teacher's distribution over each group
through the listwise KL loss. The loop is `trainer.Trainer` with only its loss replaced.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from matryoshka.data.datasets import Collection, DataError, Run, document_text, rank_documents
from matryoshka.data.sources import refuse_benchmark
from matryoshka.model.artifact import LoraAdapter
from matryoshka.model.matryoshka_model import MatryoshkaModel
from matryoshka.model.prompt import Truncation
from matryoshka.train import losses
from matryoshka.train.groups import Candidate, TrainingGroup
from matryoshka.train.lora import LoraSettings, add_lora, head_parameters, merge_lora
from matryoshka.train.structures import FULL, head_logits, run_pass
from matryoshka.train.trainer import DistillConfig, RunSummary, Trainer

ENCODER_LORA_TARGETS = ("query", "key", "value", "dense")


def teacher_groups(
    collection: Collection,
    queries: str | Sequence[str],
    run: Run,
    *,
    max_rank: int = 100,
    hard: int = 8,
    deep: int = 8,
    seed: int = 13,
    max_queries: int | None = None,
) -> list[TrainingGroup]:
    """One group of `hard + deep` candidates per query of `queries` (a qrels split or query ids) that the
    run ranks deep enough, in order, at most `max_queries`; sampling is seeded per (seed, query id)."""
    refuse_benchmark(collection)
    if hard < 1 or deep < 0 or hard + deep < 2:
        raise ValueError(f"a group needs hard >= 1, deep >= 0 and hard + deep >= 2, got {hard} and {deep}")
    if max_rank < hard + deep:
        raise ValueError(f"max_rank {max_rank} cannot hold {hard} hard plus {deep} deep candidates")
    query_ids = collection.query_ids(queries) if isinstance(queries, str) else list(queries)
    groups: list[TrainingGroup] = []
    for qid in query_ids:
        if max_queries is not None and len(groups) >= max_queries:
            break
        group = _teacher_group(collection, qid, run.get(qid, {}), max_rank, hard, deep, seed)
        if group is not None:
            groups.append(group)
    return groups


def _teacher_group(
    collection: Collection,
    qid: str,
    scores: Mapping[str, float],
    max_rank: int,
    hard: int,
    deep: int,
    seed: int,
) -> TrainingGroup | None:
    """The teacher's top `hard` in rank order, then `deep` of ranks hard+1..max_rank in rank order."""
    if qid not in collection.queries:
        raise DataError(f"query id {qid!r} is not in {collection.root / 'queries.jsonl'}")
    ranking = [doc for doc, _ in rank_documents(scores)[:max_rank]]
    if len(ranking) < hard + deep:
        return None
    rng = random.Random(f"{seed}:{qid}")  # str seeds hash with sha512: stable across processes
    chosen = ranking[:hard] + [ranking[i] for i in sorted(rng.sample(range(hard, len(ranking)), deep))]
    missing = [doc for doc in chosen if doc not in collection.corpus]
    if missing:
        raise DataError(
            f"teacher run: doc id {missing[0]!r} of query {qid!r} is not in {collection.corpus_path}"
        )
    cands = tuple(
        Candidate(doc, document_text(collection.corpus[doc]), int(rank == 0), scores[doc])
        for rank, doc in enumerate(chosen)
    )
    return TrainingGroup(qid, collection.queries[qid], cands, collection.name)


def lora_settings(model: MatryoshkaModel, rank: int) -> LoraSettings:
    """A LoRA of `rank` on the projections its family names: BERT's query/key/value/dense, else q/k/v/o."""
    if model.backbone.family == "encoder":
        return LoraSettings(rank=rank, targets=ENCODER_LORA_TARGETS)
    return LoraSettings(rank=rank)


class ListwiseTrainer(Trainer):
    """`Trainer` on the listwise KL to the groups' teacher scores, for the heads at `head_layers` only."""

    def __init__(
        self,
        model: MatryoshkaModel,
        groups: Sequence[TrainingGroup],
        config: DistillConfig,
        workdir: Path,
        params: dict[str, nn.Parameter],
        *,
        backbone_trainable: bool,
        head_layers: Sequence[int],
    ) -> None:
        # The pass stops at the deepest trained head.
        super().__init__(
            model,
            groups,
            config,
            workdir,
            params,
            backbone_trainable=backbone_trainable,
            head_layers=head_layers,
        )

    def loss(self, batch: Sequence[int]) -> tuple[Tensor, float, float]:
        """Mean over trained heads of label_weight * eq. 3 + distill_weight * listwise KL; also both parts."""
        cfg = self.config
        outs = [self.features(i) for i in batch]
        logits = self.student_logits(outs)
        teacher = self.external(batch, outs)
        assert teacher is not None  # external_teacher is "groups"
        teacher = teacher.to(next(iter(logits.values())).device)
        label = torch.stack([losses.contrastive(s, cfg.temperature) for s in logits.values()]).mean()
        distill = torch.stack([losses.listwise(s, teacher, cfg.temperature) for s in logits.values()]).mean()
        total = cfg.label_weight * label + cfg.distill_weight * distill
        return total, float(label.detach()), float(distill.detach())


def _trained_layers(model: MatryoshkaModel, depth_layer: int | None) -> tuple[int, ...]:
    """The head layers a run trains: every head, or only the one at `depth_layer` (a shallow student)."""
    layers = tuple(model.scorer.head_layers)
    if depth_layer is None:
        return layers
    if depth_layer not in layers:
        raise ValueError(f"no head at layer {depth_layer}; heads at {list(layers)}")
    return (depth_layer,)


def distill_listwise(
    model: MatryoshkaModel,
    groups: Sequence[TrainingGroup],
    workdir: Path,
    *,
    epochs: int = 1,
    groups_per_step: int = 8,
    learning_rate: float = 1e-3,
    adapter_learning_rate: float = 1e-4,
    temperature: float = 1.0,
    contrastive_weight: float = 0.0,
    lora: LoraSettings | None = None,
    depth_layer: int | None = None,
    seed: int = 13,
    checkpoint_every: int = 100,
    truncation: Truncation | None = None,
    progress: bool = True,
    max_steps: int | None = None,
) -> tuple[RunSummary, LoraAdapter | None]:
    """Train the heads (all, or the one at `depth_layer`) and optionally a LoRA on the groups' teacher
    scores; like `self_distill`, resumes from `workdir`, merges the LoRA and returns it for the artifact."""
    lora = lora or LoraSettings()
    layers = _trained_layers(model, depth_layer)
    heads = {k: p for k, p in head_parameters(model).items() if int(k.split(".")[1]) in layers}
    config = DistillConfig(
        structures=(FULL,),
        external_teacher="groups",
        label_weight=contrastive_weight,
        temperature=temperature,
        groups_per_step=groups_per_step,
        epochs=epochs,
        learning_rate=learning_rate,
        adapter_learning_rate=adapter_learning_rate,
        seed=seed,
        checkpoint_every=checkpoint_every,
        truncation=truncation or Truncation(),
    )
    peft_model, params = add_lora(model, heads, lora)
    trainer = ListwiseTrainer(
        model, groups, config, workdir, params, backbone_trainable=lora.rank > 0, head_layers=layers
    )
    trainer.precompute(range(len(groups)), progress=progress)
    summary = trainer.run(progress=progress, max_steps=max_steps)
    adapter = None if peft_model is None else merge_lora(model, peft_model, lora)
    return summary, adapter


@dataclass(frozen=True)
class Agreement:
    """How well a head's ranking matches the teacher's, averaged over groups."""

    spearman: float  # rank correlation of student logits and teacher scores
    top1: float  # fraction of groups where both rank the same candidate first


def teacher_agreement(
    model: MatryoshkaModel,
    groups: Sequence[TrainingGroup],
    layers: Sequence[int] | None = None,
    truncation: Truncation | None = None,
) -> dict[int, Agreement]:
    """Per head layer (default: all), the student's agreement with the teacher on `groups` ({} if none)."""
    layers = tuple(layers or model.scorer.head_layers)
    truncation = truncation or Truncation()
    rows: dict[int, list[tuple[float, float]]] = {layer: [] for layer in layers}
    with torch.no_grad():
        for g in groups:
            if not g.has_teacher:
                raise ValueError(f"group of query {g.query_id!r} has no teacher scores")
            pairs = model.encode(g.query, [c.text for c in g.candidates], truncation)
            out = run_pass(model, pairs, [FULL], layers)
            teacher = torch.tensor([c.teacher for c in g.candidates], dtype=torch.float32)
            for layer in layers:
                student = head_logits(model, out.pooled[(0, layer)], layer).cpu()
                top1 = float(student.argmax() == teacher.argmax())
                rows[layer].append((spearman(student, teacher), top1))
    return {
        layer: Agreement(sum(r[0] for r in v) / len(v), sum(r[1] for r in v) / len(v))
        for layer, v in rows.items()
        if v
    }


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman's rank correlation of two score vectors (ties broken by position; 0 for one element)."""
    ra, rb = (x.argsort().argsort().float() for x in (a, b))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = float(ra.norm() * rb.norm())
    return float((ra * rb).sum()) / denominator if denominator else 0.0
