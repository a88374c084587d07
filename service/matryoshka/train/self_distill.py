"""Stage 1 of the heads recipe: cascaded self-distillation (paper eq. 9 + eq. 3) of the heads and,
optionally, a LoRA on the backbone. With a frozen backbone (the CPU recipe) each group's pass is
computed once and cached; with a LoRA the pass runs with gradients each step, against the untouched
backbone's query likelihood as the external teacher.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path

import torch
from torch import Tensor

from matryoshka.model.artifact import LoraAdapter
from matryoshka.model.matryoshka_model import MatryoshkaModel
from matryoshka.train.groups import TrainingGroup
from matryoshka.train.lora import LoraSettings, add_lora, head_parameters, merge_lora
from matryoshka.train.structures import FULL, backbone_autocast, run_pass
from matryoshka.train.trainer import DistillConfig, RunSummary, Trainer


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
