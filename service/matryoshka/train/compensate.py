"""Factorized compensation training (paper section 3.3): V-LoRA and H-LoRA after self-distillation.

The backbone and the heads stay frozen; only the adapters learn. Each step runs the configured
structures (full width and compressed ones) with the adapters of each row's sub-structure summed in
(model/compensation.py) and optimises the same objective as stage 1, so the compensated students keep
learning from their full-width super-architectures and the external teacher.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from matryoshka.model.compensation import ADAPTER_TENSORS, Compensation, CompensationConfig
from matryoshka.model.matryoshka_model import MatryoshkaModel
from matryoshka.train.groups import TrainingGroup
from matryoshka.train.lora import train_only
from matryoshka.train.self_distill import frozen_query_likelihood
from matryoshka.train.trainer import DistillConfig, RunSummary, Trainer


def compensate(
    model: MatryoshkaModel,
    groups: Sequence[TrainingGroup],
    config: DistillConfig,
    compensation: CompensationConfig,
    workdir: Path,
    *,
    progress: bool = True,
    max_steps: int | None = None,
) -> tuple[RunSummary, Compensation]:
    """Install V/H-LoRA adapters in `model` and train them; they stay installed afterwards."""
    if not any(s.width for s in config.structures):
        raise ValueError("compensation needs at least one compressed structure to train H-LoRA")
    adapters = model.backbone.compensation or Compensation(model.backbone, compensation)
    adapters.enable()  # loading skips an all-zero V-LoRA; here it is trained
    params = {
        f"compensation.{name}": p
        for name, p in adapters.named_parameters()
        if name.rsplit(".", 1)[-1] in ADAPTER_TENSORS
    }
    train_only(model, params)

    @contextmanager
    def adapters_off() -> Iterator[None]:
        adapters.enable(vertical=False, horizontal=False)
        try:
            yield
        finally:
            adapters.enable()

    teacher_fn = None
    if config.external_teacher == "query_likelihood":
        teacher_fn = frozen_query_likelihood(model, adapters_off, config)
    trainer = Trainer(model, groups, config, workdir, params, backbone_trainable=True, teacher_fn=teacher_fn)
    return trainer.run(progress=progress, max_steps=max_steps), adapters
