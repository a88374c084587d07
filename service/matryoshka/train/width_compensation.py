"""H-LoRA for split-pair scoring (paper section 3.3, the horizontal part): merged widths learn to land
where the full width lands.

Under split-pair scoring (model/biencoder.py) a row's score is the cosine of its two mean-pooled sides
at the last layer. Width merging shortens the passage side and so moves its pooled embedding; on SciFact
an untrained /2 merge after layer 1 costs 0.09 nDCG@10 (docs/results.md). Each compressed structure's
rows here run with the H-LoRA of their compression factor (model/compensation.py) and are trained by
self-distillation towards the frozen model at full width: 1 - cosine to its last-layer embedding of
each side (both sides, since a merged row's adapters also touch its query tokens), plus a listwise KL
between the student's and the teacher's scores over each query's candidates, the ranking the service
returns. No labels are used. V-LoRA stays zero and untrained, so a row that is never merged scores
exactly as the bi-encoder: the full plan is untouched.

Teacher embeddings are computed once and kept in the work directory; adapters and optimizer are
checkpointed there, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from matryoshka.data.datasets import document_text, load_collection
from matryoshka.data.first_stage import first_stage
from matryoshka.data.sources import DataSource, refuse_benchmark
from matryoshka.model.artifact import Provenance, load_artifact, read_manifest, save_artifact
from matryoshka.model.biencoder import side_means
from matryoshka.model.compensation import ENCODER_TARGETS, Compensation, CompensationConfig
from matryoshka.model.matryoshka_model import MatryoshkaModel, PlanSpec
from matryoshka.model.prompt import EncodedPair, Truncation
from matryoshka.model.width import WidthTarget, merge_width
from matryoshka.train.feature_cache import load_keyed, rows_key, save_keyed

Log = Callable[[str], None]
Schedule = Mapping[int, WidthTarget]


@dataclass(frozen=True)
class WidthDistillConfig:
    """Steps, batch shape (queries x candidates), optimiser and the structures sampled per step."""

    structures: tuple[Schedule, ...]
    steps: int = 600
    queries_per_batch: int = 4
    candidates_per_query: int = 8
    lr: float = 1e-3
    temperature: float = 0.05  # of the listwise KL over cosine scores
    kl_weight: float = 1.0
    rank: int = 8
    checkpoint_every: int = 50
    seed: int = 0


@dataclass(frozen=True)
class QueryGroup:
    """One query's encoded rows (query against each BM25 candidate)."""

    rows: tuple[EncodedPair, ...]


def candidate_groups(
    model: MatryoshkaModel, sources: Sequence[str], depth: int, max_queries: int | None
) -> list[QueryGroup]:
    """Each query of each `DIR:SPLIT` source against its BM25 top-`depth`, encoded in the model's layout;
    benchmark collections are refused."""
    groups = []
    for spec in sources:
        source = DataSource.parse(spec)
        collection = load_collection(source.path)
        refuse_benchmark(collection)
        run = first_stage(collection, "bm25", source.split, depth)
        for qid in collection.query_ids(source.split)[:max_queries]:
            docs = sorted(run.get(qid, {}).items(), key=lambda kv: -kv[1])[:depth]
            if len(docs) < 2:
                continue
            texts = [document_text(collection.corpus[d]) for d, _ in docs]
            groups.append(QueryGroup(tuple(model.encode(collection.queries[qid], texts, Truncation()))))
    return groups


def side_embeddings(model: MatryoshkaModel, rows: Sequence[EncodedPair], width: Schedule) -> Tensor:
    """(rows, 2, hidden) unit-norm last-layer embeddings of the query and passage side under `width`."""
    backbone = model.backbone
    state = model.embed(rows)
    for layer in range(1, backbone.num_layers + 1):
        target = width.get(layer)
        attention = backbone.anchor_attention(layer, state) if target is not None else None
        state = backbone.forward_layer(layer, state)
        if target is not None:
            assert attention is not None
            state = merge_width(state, attention, target)
    query, passage = side_means(state)
    return torch.nn.functional.normalize(torch.stack([query, passage], dim=1), dim=-1)


def distill_loss(
    student: Tensor, teacher: Tensor, per_query: int, temperature: float, kl_weight: float
) -> Tensor:
    """Embedding loss (1 - cosine, both sides) plus listwise KL of the scores within each query's rows."""
    embedding = (1 - (student * teacher).sum(-1)).mean()
    s = (student[:, 0] * student[:, 1]).sum(-1).view(-1, per_query) / temperature
    t = (teacher[:, 0] * teacher[:, 1]).sum(-1).view(-1, per_query) / temperature
    kl = torch.nn.functional.kl_div(
        s.log_softmax(-1), t.log_softmax(-1), log_target=True, reduction="batchmean"
    )
    return embedding + kl_weight * kl


def train_width_compensation(
    model: MatryoshkaModel,
    groups: Sequence[QueryGroup],
    config: WidthDistillConfig,
    workdir: Path,
    log: Log,
) -> Compensation:
    """Install H-LoRA for the ratios the structures reach and train it; the adapters stay installed."""
    ratios = sorted({_compression(s) for s in config.structures} - {1.0})
    if not ratios:
        raise ValueError("width compensation needs at least one structure that merges")
    compensation = model.backbone.compensation or Compensation(
        model.backbone,
        CompensationConfig(
            rank=config.rank, alpha=2.0 * config.rank, ratios=tuple(ratios), targets=ENCODER_TARGETS
        ),
    )
    workdir.mkdir(parents=True, exist_ok=True)
    teacher = _teacher_embeddings(model, compensation, groups, workdir / "teacher.safetensors", log)
    params = [p for a in compensation.adapters() for p in (a.h_a, a.h_b)]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    step = _resume(compensation, optimizer, workdir / "checkpoint.pt", log)
    compensation.enable(vertical=False)  # V-LoRA stays zero: the full width is the teacher itself
    model.train(False)  # no dropout: the adapters learn the served forward
    per_query = config.candidates_per_query
    eligible = [i for i, g in enumerate(groups) if len(g.rows) >= per_query]
    if not eligible:
        raise ValueError(f"no query has {per_query} candidates to train on; lower candidates per query")
    while step < config.steps:
        rng = random.Random(config.seed * 1_000_003 + step)
        picked = rng.sample(eligible, min(config.queries_per_batch, len(eligible)))
        index = [(g, r) for g in picked for r in sorted(rng.sample(range(len(groups[g].rows)), per_query))]
        rows = [groups[g].rows[r] for g, r in index]
        target = torch.stack([teacher[g][r] for g, r in index])
        structure = config.structures[step % len(config.structures)]
        student = side_embeddings(model, rows, structure)  # in the model's dtype; adapters are fp32
        loss = distill_loss(student.float(), target, per_query, config.temperature, config.kl_weight)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step += 1
        if step % 10 == 0:
            log(f"step {step}/{config.steps} loss {loss.item():.4f} ({_label(structure)})")
        if step % config.checkpoint_every == 0 or step == config.steps:
            partial = workdir / "checkpoint.pt.partial"  # renamed into place: a kill never leaves half a file
            torch.save(
                {"step": step, "adapters": compensation.adapter_state(), "optimizer": optimizer.state_dict()},
                partial,
            )
            partial.replace(workdir / "checkpoint.pt")
    for p in params:
        p.requires_grad_(False)
    return compensation


def compensate_artifact(
    artifact: Path,
    out: Path,
    sources: Sequence[str],
    config: WidthDistillConfig,
    workdir: Path,
    *,
    depth: int,
    max_queries: int | None,
    dtype: torch.dtype,
    plans: Mapping[str, Mapping[str, Any]],
    log: Log,
    command: str,
    settings: dict[str, Any],
) -> None:
    """Load a split-pair artifact, train its width compensation on `sources` and write it to `out`
    with the named `plans` it defines (manifest form, PlanSpec.from_json; engine/named_plans.py)."""
    model = load_artifact(artifact, dtype=dtype)
    if model.scorer.name != "cosine":
        raise ValueError(f"{artifact}: scores by {model.scorer.name}; this trains split-pair (cosine) models")
    model.plans = {**model.plans, **{name: PlanSpec.from_json(spec) for name, spec in plans.items()}}
    groups = candidate_groups(model, sources, depth, max_queries)
    log(f"{len(groups)} queries, {sum(len(g.rows) for g in groups)} rows")
    train_width_compensation(model, groups, config, workdir, log)
    base = read_manifest(artifact)  # the lineage: what made the lens, calibration and fusion weights
    lineage = {**settings, "base": base["training"]}
    save_artifact(model, out, provenance=Provenance(command, {}, lineage, {"base": base["metrics"]}))


def _compression(structure: Schedule) -> float:
    ratio = 1.0
    for target in structure.values():
        if target.ratio is None:
            raise ValueError("width compensation trains ratio targets only")
        ratio *= target.ratio
    return ratio


def _label(structure: Schedule) -> str:
    return "+".join(f"/{t.ratio:g}@{layer}" for layer, t in sorted(structure.items()))


def _teacher_embeddings(
    model: MatryoshkaModel, compensation: Compensation, groups: Sequence[QueryGroup], file: Path, log: Log
) -> list[Tensor]:
    """Per group, (rows, 2, hidden) full-width embeddings of the frozen model (computed once, on disk)."""
    sizes = [len(g.rows) for g in groups]
    key = rows_key(model.fingerprint, (row for group in groups for row in group.rows))
    stored = load_keyed(file, key)
    if stored is not None:
        return list(stored["embeddings"].split(sizes))
    if file.is_file():
        log(f"{file}: made for other rows or weights; recomputing")
    compensation.enable(vertical=False, horizontal=False)
    out = []
    with torch.no_grad():
        for i, group in enumerate(groups):
            out.append(side_embeddings(model, group.rows, {}).float())
            if (i + 1) % 100 == 0:
                log(f"teacher {i + 1}/{len(groups)} queries")
    compensation.enable(vertical=False)
    save_keyed({"embeddings": torch.cat(out).contiguous()}, file, key)
    return out


def _resume(compensation: Compensation, optimizer: torch.optim.Optimizer, file: Path, log: Log) -> int:
    if not file.is_file():
        return 0
    saved = torch.load(file, weights_only=True)
    compensation.load_adapter_state(saved["adapters"])
    optimizer.load_state_dict(saved["optimizer"])
    log(f"resumed at step {saved['step']}")
    return int(saved["step"])
