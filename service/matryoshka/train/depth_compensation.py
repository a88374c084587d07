"""V-LoRA by segment-wise self-distillation (paper section 3.3, the vertical part, on a CPU): the exits
of a query-likelihood model learn to read, at their depth, what the full depth reads.

The frozen model runs every training group once: its state after layer K (`segment_from`) and the last
layer's residuals at the positions that predict query tokens are kept on disk (`collect_segments`). Training
then runs layers K+1..last only, with V-LoRA (model/compensation.py) on each of them and the lens
translators of the exit layers above K trainable. At every exit above K and at the last layer, the
read-out's next-token distribution at the query positions is pulled towards the frozen full model's
(KL on the teacher's top-k tokens plus the targets, as the lens is fitted; train/lens.py). No labels:
the teacher is the model itself. Backprop runs through last - K layers, not the whole model. The adapters
are on in every plan that passes layer K, the full one included, so the loss at the last layer is what
holds the full plan where it was. Adapters, lens and optimiser are checkpointed in the work directory, so
a killed run resumes; the per-layer calibration above K is refitted on the dev groups afterwards.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from matryoshka.data.datasets import load_collection
from matryoshka.data.sources import DataSource
from matryoshka.model.artifact import Provenance, load_artifact, read_manifest, save_artifact
from matryoshka.model.compensation import DECODER_TARGETS, Compensation, CompensationConfig
from matryoshka.model.heads import QueryLikelihoodScorer, query_positions
from matryoshka.model.loading import sha256_file
from matryoshka.model.matryoshka_model import MatryoshkaModel
from matryoshka.model.prompt import Truncation
from matryoshka.model.state import LayerState
from matryoshka.train.calibrate import calibrate
from matryoshka.train.feature_cache import load_keyed, rows_key, save_keyed
from matryoshka.train.groups import (
    GroupSpec,
    TrainingGroup,
    build_groups,
    load_groups,
    save_groups,
    split_groups,
)
from matryoshka.train.lens import support_kl, teacher_support
from matryoshka.train.recipe import group_mrr
from matryoshka.train.structures import backbone_autocast

Log = Callable[[str], None]
STATE_FIELDS = ("hidden", "mask", "segments", "token_ids")


@dataclass(frozen=True)
class DepthDistillConfig:
    """The segment (frozen below `segment_from`), its exits, and the optimiser's settings."""

    segment_from: int = 15
    exits: tuple[int, ...] = ()  # the exits trained (V-LoRA up to the deepest); () = every one above K
    epochs: int = 2
    lr: float = 1e-3  # V-LoRA
    lens_lr: float = 1e-3  # the exits' lens translators
    rank: int = 8
    top_k: int = 32  # teacher tokens per position in the KL's support
    checkpoint_every: int = 25
    seed: int = 0
    bf16: bool = False


@dataclass
class SegmentGroup:
    """One group's frozen state after layer K, and the last layer's residuals at its query positions."""

    state: LayerState
    teacher: Tensor  # (positions, hidden) fp32


def exits_above(scorer: QueryLikelihoodScorer, segment_from: int) -> tuple[int, ...]:
    """The exit (head) layers the segment trains: every head layer above K, the last included."""
    last = scorer.decoder.num_layers
    if not 0 < segment_from < last:
        raise ValueError(f"segment_from must be in 1..{last - 1}, got {segment_from}")
    return tuple(layer for layer in scorer.head_layers if layer > segment_from)


def trained_exits(scorer: QueryLikelihoodScorer, config: DepthDistillConfig) -> tuple[int, ...]:
    """The exits `config` trains: its `exits`, each a head layer above K, or all of them by default."""
    above = exits_above(scorer, config.segment_from)
    wrong = sorted(set(config.exits) - set(above))
    if wrong:
        raise ValueError(
            f"exits {wrong} are not head layers above layer {config.segment_from} (those: {above})"
        )
    return tuple(sorted(set(config.exits))) or above


def collect_segments(
    model: MatryoshkaModel,
    groups: Sequence[TrainingGroup],
    segment_from: int,
    truncation: Truncation,
    file: Path,
    log: Log,
    *,
    bf16: bool = False,
) -> list[SegmentGroup]:
    """Every group's segment input and teacher, from `file` when it was made for the same weights, layer and
    rows, else computed with the adapters off (the frozen model) and written there."""
    encoded = [model.encode(g.query, [c.text for c in g.candidates], truncation) for g in groups]
    key = rows_key(f"{model.fingerprint}:{segment_from}", (row for rows in encoded for row in rows))
    stored = load_keyed(file, key)
    if stored is not None:
        return _segments(stored, len(groups), segment_from)
    if file.is_file():
        log(f"{file}: made for other rows, weights or layer; recomputing")
    backbone = model.backbone
    out = []
    with torch.no_grad(), backbone_autocast(model, bf16), _adapters_off(backbone.compensation):
        for i, rows in enumerate(encoded):
            state = model.embed(rows)
            for layer in range(1, segment_from + 1):
                state = backbone.forward_layer(layer, state)
            kept = _stripped(state)
            for layer in range(segment_from + 1, backbone.num_layers + 1):
                state = backbone.forward_layer(layer, state)
            out.append(SegmentGroup(kept, state.hidden[query_positions(state).predicts].float()))
            if (i + 1) % 20 == 0:
                log(f"segment states {i + 1}/{len(encoded)} groups")
    tensors = {
        f"{i}.{name}": getattr(g.state, name).contiguous() for i, g in enumerate(out) for name in STATE_FIELDS
    }
    tensors |= {f"{i}.teacher": g.teacher.contiguous() for i, g in enumerate(out)}
    save_keyed(tensors, file, key)
    return out


def segment_loss(model: MatryoshkaModel, group: SegmentGroup, exits: Sequence[int], top_k: int) -> Tensor:
    """Mean over `exits` of KL(frozen full model || read-out at the exit) at the group's query positions."""
    scorer = model.scorer
    assert isinstance(scorer, QueryLikelihoodScorer)
    at = query_positions(group.state)
    support, teacher = teacher_support(scorer, group.teacher, at.targets, top_k)
    state, loss = group.state, torch.zeros(())
    for layer in range(group.state.layer + 1, max(exits) + 1):
        state = model.backbone.forward_layer(layer, state)
        if layer in exits:
            hidden = scorer.lens(layer, state.hidden[at.predicts].float())
            loss = loss + support_kl(scorer, hidden, support, teacher)
    return loss / len(exits)


def train_depth_compensation(
    model: MatryoshkaModel,
    segments: Sequence[SegmentGroup],
    config: DepthDistillConfig,
    workdir: Path,
    log: Log,
) -> list[float]:
    """Install V-LoRA above `segment_from` and train it with the exits' lens; returns the mean loss of each
    epoch run in this call. The adapters stay installed (and on) afterwards."""
    scorer = model.scorer
    if not isinstance(scorer, QueryLikelihoodScorer):
        raise ValueError(f"depth compensation trains query-likelihood models, not {scorer.name} scoring")
    if not segments:
        raise ValueError("no training groups")
    exits = trained_exits(scorer, config)
    backbone = model.backbone
    compensation = backbone.compensation or Compensation(
        backbone,
        CompensationConfig(rank=config.rank, alpha=2.0 * config.rank, ratios=(), targets=DECODER_TARGETS),
    )
    segment = range(config.segment_from + 1, max(exits) + 1)
    adapters = [p for layer in segment for a in compensation.adapters(layer) for p in (a.v_a, a.v_b)]
    lens = [
        p for layer in exits if layer in scorer.lens for p in scorer.lens.translators[str(layer)].parameters()
    ]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in adapters + lens:
        p.requires_grad_(True)
    optimiser = torch.optim.AdamW(
        [{"params": adapters, "lr": config.lr}, {"params": lens, "lr": config.lens_lr}], weight_decay=0.0
    )
    workdir.mkdir(parents=True, exist_ok=True)
    checkpoint = workdir / "checkpoint.pt"
    step = _resume(model, compensation, optimiser, checkpoint, log)
    compensation.enable(vertical=True, horizontal=False)
    for layer in (*range(1, config.segment_from + 1), *range(max(exits) + 1, backbone.num_layers + 1)):
        for adapter in compensation.adapters(layer):  # outside the segment nothing is trained: zero, skipped
            adapter.use_v = False
    model.train(False)  # no dropout: the adapters learn the served forward
    total_steps, n = config.epochs * len(segments), len(segments)
    history, running, ran = [], 0.0, 0
    while step < total_steps:
        epoch, index = divmod(step, n)
        order = list(range(n))
        random.Random(config.seed * 1_000_003 + epoch).shuffle(order)
        with backbone_autocast(model, config.bf16):
            loss = segment_loss(model, segments[order[index]], exits, config.top_k)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        step += 1
        running, ran = running + loss.item(), ran + 1
        if step % 10 == 0:
            log(f"step {step}/{total_steps} (epoch {epoch + 1}) loss {loss.item():.4f}")
        if step % config.checkpoint_every == 0 or step == total_steps or step % n == 0:
            _checkpoint(model, compensation, optimiser, step, checkpoint)
        if step % n == 0:  # an epoch resumed part-way is averaged over the steps this call ran
            history.append(running / ran)
            log(f"epoch {epoch + 1}: mean KL {history[-1]:.4f}")
            running, ran = 0.0, 0
    for p in adapters + lens:
        p.requires_grad_(False)
    return history


def segment_logits(
    model: MatryoshkaModel, segments: Sequence[SegmentGroup], layers: Sequence[int]
) -> dict[int, Tensor]:
    """Per layer above the segment's start, the raw query-likelihood logit of every row of `segments`."""
    scorer = model.scorer
    assert isinstance(scorer, QueryLikelihoodScorer)
    out: dict[int, list[Tensor]] = {layer: [] for layer in layers}
    with torch.no_grad():
        for group in segments:
            state = group.state
            for layer in range(state.layer + 1, max(layers) + 1):
                state = model.backbone.forward_layer(layer, state)
                if layer in out:
                    out[layer].append(scorer.logits(state).float())
    return {layer: torch.cat(v) for layer, v in out.items()}


def _stripped(state: LayerState) -> LayerState:
    """The state without its derived per-shape tables, on the CPU, for storing."""
    return LayerState(
        state.hidden.float().cpu(), state.mask.cpu(), state.segments.cpu(), state.token_ids.cpu(), state.layer
    )


def _segments(t: dict[str, Tensor], count: int, segment_from: int) -> list[SegmentGroup]:
    return [
        SegmentGroup(
            LayerState(
                t[f"{i}.hidden"], t[f"{i}.mask"], t[f"{i}.segments"], t[f"{i}.token_ids"], segment_from
            ),
            t[f"{i}.teacher"],
        )
        for i in range(count)
    ]


@contextmanager
def _adapters_off(compensation: Compensation | None) -> Iterator[None]:
    """Every adapter of `compensation` (if any) off inside; each V-LoRA's switch restored after."""
    if compensation is None:
        yield
        return
    saved = [a.use_v for a in compensation.adapters()]
    compensation.enable(vertical=False, horizontal=False)
    try:
        yield
    finally:
        for adapter, on in zip(compensation.adapters(), saved, strict=True):
            adapter.use_v = on


def _checkpoint(
    model: MatryoshkaModel,
    compensation: Compensation,
    optimiser: torch.optim.Optimizer,
    step: int,
    file: Path,
) -> None:
    lens = model.scorer.lens if isinstance(model.scorer, QueryLikelihoodScorer) else None
    partial = file.with_suffix(".partial")  # renamed into place: a kill never leaves half a file
    torch.save(
        {
            "step": step,
            "adapters": compensation.adapter_state(),
            "lens": lens.state_dict() if lens is not None else {},
            "optimizer": optimiser.state_dict(),
        },
        partial,
    )
    partial.replace(file)


def _resume(
    model: MatryoshkaModel, compensation: Compensation, optimiser: torch.optim.Optimizer, file: Path, log: Log
) -> int:
    if not file.is_file():
        return 0
    saved = torch.load(file, weights_only=True)
    compensation.load_adapter_state(saved["adapters"])
    if isinstance(model.scorer, QueryLikelihoodScorer):
        model.scorer.lens.load_state_dict(saved["lens"])
    optimiser.load_state_dict(saved["optimizer"])
    log(f"resumed at step {saved['step']}")
    return int(saved["step"])


def compensate_depth_artifact(
    artifact: Path,
    out: Path,
    sources: Sequence[str],
    config: DepthDistillConfig,
    groups: GroupSpec,
    workdir: Path,
    *,
    dev_fraction: float,
    log: Log,
    command: str,
    settings: dict[str, Any],
) -> dict[str, Any]:
    """Load a query-likelihood artifact, train its depth compensation on groups from `sources` (DIR:SPLIT),
    refit the calibration above the segment on the dev groups and write it to `out`; returns the metrics."""
    torch.manual_seed(config.seed)
    model = load_artifact(artifact)
    scorer = model.scorer
    if not isinstance(scorer, QueryLikelihoodScorer):
        raise ValueError(f"{artifact}: scores by {scorer.name}; depth compensation trains query likelihood")
    trained_exits(scorer, config)  # refuses bad exits before any work
    exits = exits_above(scorer, config.segment_from)  # every layer above K scores differently: recalibrated
    workdir.mkdir(parents=True, exist_ok=True)
    file = workdir / "groups.jsonl"
    if not file.is_file():
        built = [g for s in sources for g in _source_groups(s, groups)]
        save_groups([g for g in built if len(g.candidates) == groups.negatives + 1], file)
    train, dev = split_groups(load_groups(file), dev_fraction, groups.seed)
    if not train or not dev:
        raise ValueError(
            f"{len(train)} training and {len(dev)} dev groups (of {groups.negatives + 1} candidates) from "
            f"{', '.join(sources)}: need both; give more queries or fewer negatives"
        )
    log(f"{len(train)} training groups, {len(dev)} dev groups")
    truncation = Truncation()
    cached = {
        name: collect_segments(
            model,
            part,
            config.segment_from,
            truncation,
            workdir / f"{name}.safetensors",
            log,
            bf16=config.bf16,
        )
        for name, part in (("train", train), ("dev", dev))
    }
    labels = torch.tensor([float(c.label) for g in dev for c in g.candidates])
    size = groups.negatives + 1
    before = segment_logits(model, cached["dev"], exits)
    history = train_depth_compensation(model, cached["train"], config, workdir, log)
    after = segment_logits(model, cached["dev"], exits)
    fits = calibrate(scorer.calibration, after, labels)
    model.calibration_version = f"platt-dev-{len(dev)}q"
    metrics = {
        "train_groups": len(train),
        "dev_groups": len(dev),
        "kl_per_epoch": [round(v, 4) for v in history],
        "dev_mrr_before": {layer: round(group_mrr(v, size), 4) for layer, v in before.items()},
        "dev_mrr": {layer: round(group_mrr(v, size), 4) for layer, v in after.items()},
        "dev_logloss": {
            layer: [round(f.loss_before, 4), round(f.loss_after, 4)] for layer, f in fits.items()
        },
    }
    base = read_manifest(artifact)  # the lineage: what made the lens, the layers below and the fusion weights
    lineage = {**settings, "base": base["training"]}
    save_artifact(
        model, out, provenance=Provenance(command, {file.name: sha256_file(file)}, lineage, metrics)
    )
    return metrics


def _source_groups(spec: str, groups: GroupSpec) -> list[TrainingGroup]:
    source = DataSource.parse(spec)
    return build_groups(load_collection(source.path), source.split, groups)
