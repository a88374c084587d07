"""The training loop shared by every recipe: batches of groups, the eq. 9 + eq. 3 loss over the students
of one pass, AdamW over the trainable tensors, and checkpoints a run resumes from.

Every step takes a few groups, runs the structures in one pass (train/structures.py) and trains each
student (structure, head layer) on the contrastive loss over its group plus the distillation loss from
its teacher committee: the full-width heads at deeper teacher layers (its super-architectures) and,
when one is given, an external teacher (the backbone's own full-depth query likelihood, or scores
from a TREC run file attached to the groups). When nothing in the backbone is trainable the passes
come from a `FeatureCache`. Checkpoints (trainable tensors, optimizer, step) are written every
`checkpoint_every` steps and a run started again with the same work directory resumes from the last one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm import tqdm  # type: ignore[import-untyped]

from matryoshka.model.matryoshka_model import MatryoshkaModel
from matryoshka.model.prompt import Truncation
from matryoshka.train import losses
from matryoshka.train.feature_cache import FeatureCache
from matryoshka.train.groups import TrainingGroup
from matryoshka.train.structures import (
    FULL,
    PassOutput,
    Structure,
    backbone_autocast,
    head_logits,
    run_pass,
)

log = logging.getLogger(__name__)

ExternalTeacher = Literal["none", "query_likelihood", "groups"]


@dataclass
class DistillConfig:
    """What to train and how; defaults are the CPU heads-only recipe."""

    teacher_layers: tuple[int, ...] = ()  # full-width committee layers; () = head layers in the deeper half
    structures: tuple[Structure, ...] = (FULL,)
    external_teacher: ExternalTeacher = "query_likelihood"
    self_distill: bool = True  # False: labels only (the "w/o self-distillation" ablation)
    label_weight: float = 1.0
    distill_weight: float = 1.0
    temperature: float = 1.0
    groups_per_step: int = 8
    epochs: int = 1
    learning_rate: float = 1e-3  # heads
    adapter_learning_rate: float = 1e-4  # LoRA / compensation adapters (the paper's rate)
    weight_decay: float = 0.0
    seed: int = 13
    checkpoint_every: int = 100
    bf16: bool = True  # bf16 autocast for the backbone pass; heads, losses and optimiser stay fp32
    truncation: Truncation = field(default_factory=Truncation)

    def teachers(self, head_layers: Sequence[int], num_layers: int) -> tuple[int, ...]:
        """The committee's layers (validated against the head layers)."""
        chosen = self.teacher_layers or tuple(layer for layer in head_layers if layer >= num_layers // 2)
        missing = sorted(set(chosen) - set(head_layers))
        if missing:
            raise ValueError(f"teacher layers {missing} have no head")
        return tuple(sorted(chosen))


@dataclass
class StepLog:
    """Loss of one step, split into its parts."""

    step: int
    loss: float
    label: float
    distill: float


@dataclass
class RunSummary:
    """What a training run did."""

    steps: int
    epochs: int
    seconds: float
    first_loss: float
    last_loss: float
    resumed_from: int = 0
    history: list[StepLog] = field(default_factory=list)


class Trainer:
    """Trains `params` of `model` on `groups` with eq. 9 + eq. 3, resuming from `workdir` if it can."""

    def __init__(
        self,
        model: MatryoshkaModel,
        groups: Sequence[TrainingGroup],
        config: DistillConfig,
        workdir: Path,
        params: dict[str, nn.Parameter],
        *,
        backbone_trainable: bool,
        teacher_fn: Callable[[Sequence[TrainingGroup]], Tensor] | None = None,
        head_layers: Sequence[int] | None = None,
    ) -> None:
        if not groups:
            raise ValueError("no training groups")
        sizes = {len(g.candidates) for g in groups}
        if len(sizes) != 1:
            raise ValueError(f"all groups need the same number of candidates, got sizes {sorted(sizes)}")
        if config.external_teacher == "groups" and not all(g.has_teacher for g in groups):
            raise ValueError("external_teacher='groups' needs teacher scores on every candidate")
        self.model = model
        self.groups = list(groups)
        self.group_size = sizes.pop()
        self.config = config
        self.workdir = workdir
        self.params = params
        self.backbone_trainable = backbone_trainable
        self.teacher_fn = teacher_fn
        self.head_layers = tuple(head_layers or model.scorer.head_layers)
        self.teacher_layers = config.teachers(self.head_layers, model.backbone.num_layers)
        self.cache = None
        if not backbone_trainable:
            self.cache = FeatureCache(workdir / "features", self._pass_identity())
        heads = [p for k, p in params.items() if k.startswith("heads.")]
        adapters = [p for k, p in params.items() if not k.startswith("heads.")]
        groups_ = [{"params": heads, "lr": config.learning_rate}]
        if adapters:
            groups_.append({"params": adapters, "lr": config.adapter_learning_rate})
        self.optimizer = torch.optim.AdamW(groups_, weight_decay=config.weight_decay)

    # -- the pass ------------------------------------------------------------------------------------

    def _pass_identity(self) -> str:
        """What the cached passes depend on: weights, template, structures, layers, groups, truncation."""
        identity = {
            "model": self.model.fingerprint,
            "template": self.model.template.version,
            "structures": [s.label for s in self.config.structures],
            "head_layers": list(self.head_layers),
            "truncation": asdict(self.config.truncation),
            "bf16": self.config.bf16,
            "teacher": self.config.external_teacher,
            "groups": [[g.query_id, *(c.doc_id for c in g.candidates)] for g in self.groups],
        }
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()

    def features(self, index: int) -> PassOutput:
        """Pooled states of one group (from the cache when the backbone is frozen)."""
        if self.cache is not None:
            cached = self.cache.get(index)
            if cached is not None:
                return cached
        group = self.groups[index]
        pairs = self.model.encode(group.query, [c.text for c in group.candidates], self.config.truncation)
        want_ql = self.config.external_teacher == "query_likelihood" and self.teacher_fn is None
        with backbone_autocast(self.model, self.config.bf16):
            if self.cache is not None:
                with torch.no_grad():
                    out = run_pass(
                        self.model, pairs, self.config.structures, self.head_layers, query_likelihood=want_ql
                    )
                self.cache.put(index, out)
                return out
            return run_pass(
                self.model, pairs, self.config.structures, self.head_layers, query_likelihood=want_ql
            )

    def precompute(self, indices: Sequence[int], progress: bool = True) -> None:
        """Fill the feature cache for `indices` (no-op when the backbone trains)."""
        if self.cache is None:
            return
        todo = [i for i in indices if not self.cache.has(i)]
        for i in tqdm(todo, desc="features", unit="group", disable=not progress or not todo):
            self.features(i)

    # -- the loss ------------------------------------------------------------------------------------

    def student_logits(self, outs: Sequence[PassOutput]) -> dict[tuple[int, int], Tensor]:
        """(structure, layer) -> (groups, candidates) logits of every student present in all outputs."""
        keys = [k for k in outs[0].pooled if all(k in o.pooled for o in outs)]
        return {
            key: torch.stack([head_logits(self.model, o.pooled[key], key[1]) for o in outs]) for key in keys
        }

    def external(self, batch: Sequence[int], outs: Sequence[PassOutput]) -> Tensor | None:
        """(groups, candidates) external teacher logits, or None."""
        mode = self.config.external_teacher
        if mode == "none":
            return None
        if mode == "groups":
            return torch.tensor([[c.teacher for c in self.groups[i].candidates] for i in batch])
        if self.teacher_fn is not None:
            return self.teacher_fn([self.groups[i] for i in batch])
        if any(o.query_likelihood is None for o in outs):
            raise ValueError("the query-likelihood teacher needs the pass to reach the last layer")
        return torch.stack([o.query_likelihood for o in outs if o.query_likelihood is not None])

    def loss(self, batch: Sequence[int]) -> tuple[Tensor, float, float]:
        """Mean over students of label_weight * eq. 3 + distill_weight * eq. 9; also the two parts."""
        cfg = self.config
        outs = [self.features(i) for i in batch]
        logits = self.student_logits(outs)
        outside = self.external(batch, outs)
        label_terms, distill_terms = [], []
        for (structure, layer), student in logits.items():
            label_terms.append(losses.contrastive(student, cfg.temperature))
            teachers = []
            if cfg.self_distill:
                teachers = [
                    logits[(0, t)]
                    for t in self.teacher_layers
                    if (0, t) in logits and (t > layer or (t == layer and structure != 0))
                ]
            if outside is not None and cfg.self_distill:
                teachers.append(outside)
            distill_terms.append(losses.committee(student, teachers, cfg.temperature))
        label = torch.stack(label_terms).mean()
        distill = torch.stack(distill_terms).mean()
        total = cfg.label_weight * label + cfg.distill_weight * distill
        return total, float(label.detach()), float(distill.detach())

    # -- the loop ------------------------------------------------------------------------------------

    def batches(self, epoch: int) -> list[list[int]]:
        """The epoch's batches of group indices, in a seeded order."""
        order = list(range(len(self.groups)))
        random.Random(self.config.seed * 1000 + epoch).shuffle(order)
        g = self.config.groups_per_step
        return [order[i : i + g] for i in range(0, len(order), g)]

    def run(self, *, progress: bool = True, max_steps: int | None = None) -> RunSummary:
        """Train for the configured epochs (or `max_steps`), checkpointing; resumes if a checkpoint exists."""
        torch.manual_seed(self.config.seed)
        start = self.resume()
        steps_per_epoch = len(self.batches(0))
        total = self.config.epochs * steps_per_epoch if max_steps is None else max_steps
        history: list[StepLog] = []
        began = time.perf_counter()
        bar = tqdm(total=total, initial=start, desc="train", unit="step", disable=not progress)
        step = start
        for epoch, batch in self._schedule(start, steps_per_epoch):
            if step >= total:
                break
            self.model.train()
            loss, label, distill = self.loss(batch)
            if not math.isfinite(float(loss.detach())):
                raise FloatingPointError(f"loss is {float(loss.detach())} at step {step} (epoch {epoch})")
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            step += 1
            history.append(StepLog(step, float(loss.detach()), label, distill))
            bar.update(1)
            bar.set_postfix(loss=f"{history[-1].loss:.4f}")
            if step % self.config.checkpoint_every == 0 or step == total:
                self.checkpoint(step)
        bar.close()
        self.model.eval()
        return RunSummary(
            steps=step,
            epochs=self.config.epochs,
            seconds=time.perf_counter() - began,
            first_loss=history[0].loss if history else math.nan,
            last_loss=history[-1].loss if history else math.nan,
            resumed_from=start,
            history=history,
        )

    def _schedule(self, start: int, steps_per_epoch: int) -> Iterator[tuple[int, list[int]]]:
        epoch = start // steps_per_epoch
        skip = start % steps_per_epoch
        while True:
            for batch in self.batches(epoch)[skip:]:
                yield epoch, batch
            epoch, skip = epoch + 1, 0

    # -- checkpoints ---------------------------------------------------------------------------------

    @property
    def checkpoint_dir(self) -> Path:
        """Where the latest checkpoint lives."""
        return self.workdir / "checkpoint"

    def checkpoint(self, step: int) -> None:
        """Atomically replace the checkpoint with the current trainable tensors, optimizer and step."""
        tmp = self.workdir / "checkpoint.tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        save_file(
            {k: p.detach().cpu().contiguous() for k, p in self.params.items()}, tmp / "params.safetensors"
        )
        torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
        (tmp / "state.json").write_text(
            json.dumps({"step": step, "config": _jsonable(self.config)}, indent=2)
        )
        old = self.workdir / "checkpoint.old"
        if self.checkpoint_dir.exists():
            self.checkpoint_dir.rename(old)
        tmp.rename(self.checkpoint_dir)
        if old.exists():
            for f in old.iterdir():
                f.unlink()
            old.rmdir()

    def resume(self) -> int:
        """Load the checkpoint if there is one; returns the step it was taken at (0 if none)."""
        state_file = self.checkpoint_dir / "state.json"
        if not state_file.is_file():
            return 0
        tensors = load_file(self.checkpoint_dir / "params.safetensors")
        if set(tensors) != set(self.params):
            raise ValueError(f"{self.checkpoint_dir}: checkpoint holds other parameters; use a new workdir")
        with torch.no_grad():
            for k, p in self.params.items():
                p.copy_(tensors[k])
        self.optimizer.load_state_dict(torch.load(self.checkpoint_dir / "optimizer.pt", weights_only=True))
        step = int(json.loads(state_file.read_text())["step"])
        log.info("resumed from %s at step %d", self.checkpoint_dir, step)
        return step


def _jsonable(config: DistillConfig) -> dict[str, object]:
    data = asdict(config)
    data["structures"] = [s.label for s in config.structures]
    return data
