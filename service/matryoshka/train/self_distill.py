"""Cascaded self-distillation (paper eq. 9 + eq. 3), also the loop that trains compensation.

Every step takes a few groups, runs the structures in one pass (train/structures.py) and trains each
student (structure, head layer) on the contrastive loss over its group plus the distillation loss from
its teacher committee: the full-width heads at deeper teacher layers (its super-architectures) and,
when one is given, an external teacher (the backbone's own full-depth query likelihood, or scores
from a TREC run file attached to the groups).

When nothing in the backbone is trainable (heads only, the CPU recipe), the pass is computed once per
group and its pooled states are kept on disk (safetensors), so later epochs, ablations and calibration
cost no backbone compute. With a LoRA or compensation adapters the pass runs with gradients each step.
Checkpoints (trainable tensors, optimizer, step) are written every `checkpoint_every` steps and a run
started again with the same work directory resumes from the last one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm import tqdm  # type: ignore[import-untyped]

from matryoshka.model.artifact import LoraAdapter
from matryoshka.model.matryoshka_model import MatryoshkaModel
from matryoshka.model.prompt import Truncation
from matryoshka.train import losses
from matryoshka.train.data import TrainingGroup
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


class FeatureCache:
    """Pooled states of frozen-backbone passes, one safetensors file per group, valid for one identity
    (a hash of everything the passes depend on); a folder holding another identity is refused."""

    def __init__(self, root: Path, identity: str) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        stamp = root / "identity.txt"
        if stamp.is_file() and stamp.read_text().strip() != identity:
            raise ValueError(
                f"{root} holds passes of another model, data or configuration; use a new --workdir"
            )
        stamp.write_text(identity + "\n")
        self._memory: dict[int, PassOutput] = {}

    def _file(self, index: int) -> Path:
        return self.root / f"{index:06d}.safetensors"

    def has(self, index: int) -> bool:
        """Whether group `index` is cached."""
        return index in self._memory or self._file(index).is_file()

    def get(self, index: int) -> PassOutput | None:
        """The cached pass of group `index`, or None."""
        if index in self._memory:
            return self._memory[index]
        file = self._file(index)
        if not file.is_file():
            return None
        tensors = load_file(file)
        pooled = {}
        ql = None
        for key, value in tensors.items():
            if key == "query_likelihood":
                ql = value.float()
            else:
                s, layer = key.split("@")
                pooled[(int(s), int(layer))] = value.float()
        out = PassOutput(pooled, ql)
        self._memory[index] = out
        return out

    def put(self, index: int, out: PassOutput) -> None:
        """Store one group's pass (fp16 on disk, fp32 in memory)."""
        tensors = {f"{s}@{layer}": v.detach().half().contiguous() for (s, layer), v in out.pooled.items()}
        if out.query_likelihood is not None:
            tensors["query_likelihood"] = out.query_likelihood.detach().float().contiguous()
        tmp = self._file(index).with_suffix(".tmp")
        save_file(tensors, tmp)
        tmp.rename(self._file(index))
        self._memory[index] = PassOutput(
            {k: v.detach().half().float() for k, v in out.pooled.items()},
            None if out.query_likelihood is None else out.query_likelihood.detach().float(),
        )


def head_parameters(model: MatryoshkaModel) -> dict[str, nn.Parameter]:
    """The heads' parameters by name (what heads-only training updates)."""
    heads = getattr(model.scorer, "heads", None)
    if heads is None:
        raise ValueError(f"model scores by {model.scorer.name}; training needs heads")
    return {f"heads.{k}": p for k, p in heads.named_parameters()}


def _jsonable(config: DistillConfig) -> dict[str, object]:
    data = asdict(config)
    data["structures"] = [s.label for s in config.structures]
    return data


@dataclass(frozen=True)
class LoraSettings:
    """Stage-1 LoRA on the backbone (peft); rank 0 trains the heads alone on a frozen backbone."""

    rank: int = 0
    alpha: int = 32
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")

    def peft_config(self) -> dict[str, Any]:
        """The peft `LoraConfig` fields (also what an artifact stores to rebuild it)."""
        return {
            "r": self.rank,
            "lora_alpha": self.alpha,
            "target_modules": list(self.targets),
            "lora_dropout": 0.0,
        }


def self_distill(
    model: MatryoshkaModel,
    groups: Sequence[TrainingGroup],
    config: DistillConfig,
    workdir: Path,
    *,
    lora: LoraSettings | None = None,
    progress: bool = True,
    max_steps: int | None = None,
) -> tuple[RunSummary, LoraAdapter | None]:
    """Stage 1: heads (and optionally a peft LoRA) by cascaded self-distillation. The LoRA is merged into
    `model`'s weights afterwards (as `load_artifact` does) and returned for the artifact to store."""
    lora = lora or LoraSettings()
    peft_model, params = add_lora(model, head_parameters(model), lora)
    teacher_fn = None
    if peft_model is not None and config.external_teacher == "query_likelihood":
        teacher_fn = frozen_query_likelihood(model, peft_model.disable_adapter, config)
    trainer = Trainer(
        model, groups, config, workdir, params, backbone_trainable=lora.rank > 0, teacher_fn=teacher_fn
    )
    trainer.precompute(range(len(groups)), progress=progress)
    summary = trainer.run(progress=progress, max_steps=max_steps)
    adapter = None if peft_model is None else merge_lora(model, peft_model, lora)
    return summary, adapter


def add_lora(
    model: MatryoshkaModel, params: dict[str, nn.Parameter], lora: LoraSettings
) -> tuple[Any, dict[str, nn.Parameter]]:
    """Wrap the backbone in a peft LoRA when `lora.rank` > 0; returns the peft model (or None) and
    `params` plus its tensors ("lora.*"), which are then the only trainable parameters of `model`."""
    peft_model = None
    params = dict(params)
    if lora.rank > 0:
        from peft import LoraConfig, get_peft_model

        peft_model = get_peft_model(model.backbone.hf_model, LoraConfig(**lora.peft_config()))
        params.update({f"lora.{k}": p for k, p in peft_model.named_parameters() if p.requires_grad})
    train_only(model, params)
    return peft_model, params


def train_only(model: MatryoshkaModel, params: dict[str, nn.Parameter]) -> None:
    """Freeze every parameter of `model` except `params`."""
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params.values():
        p.requires_grad_(True)


def merge_lora(model: MatryoshkaModel, peft_model: Any, lora: LoraSettings) -> LoraAdapter:
    """The trained LoRA as an artifact adapter; merges it into `model`'s weights (as `load_artifact`
    does) and freezes the model again."""
    from peft import get_peft_model_state_dict

    state = {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(peft_model).items()}
    adapter = LoraAdapter(lora.peft_config(), state)
    peft_model.merge_and_unload()  # the layers hold plain, updated weights again, as after loading
    train_only(model, {})
    return adapter


def frozen_query_likelihood(
    model: MatryoshkaModel, adapters_off: Callable[[], AbstractContextManager[object]], config: DistillConfig
) -> Callable[[Sequence[TrainingGroup]], Tensor]:
    """The untouched backbone's full-depth query likelihood (adapters off) as the external teacher."""
    layers = (model.backbone.num_layers,)

    def teacher(groups: Sequence[TrainingGroup]) -> Tensor:
        rows = []
        with torch.no_grad(), adapters_off(), backbone_autocast(model, config.bf16):
            for g in groups:
                pairs = model.encode(g.query, [c.text for c in g.candidates], config.truncation)
                out = run_pass(model, pairs, [FULL], layers, query_likelihood=True)
                assert out.query_likelihood is not None
                rows.append(out.query_likelihood)
        return torch.stack(rows)

    return teacher
