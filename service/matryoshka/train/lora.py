"""Trainable parameters: the heads, a peft LoRA on the backbone (stage 1), and freezing the rest."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from matryoshka.model.artifact import LoraAdapter
from matryoshka.model.matryoshka_model import MatryoshkaModel


def head_parameters(model: MatryoshkaModel) -> dict[str, nn.Parameter]:
    """The heads' parameters by name (what heads-only training updates)."""
    heads = getattr(model.scorer, "heads", None)
    if heads is None:
        raise ValueError(f"model scores by {model.scorer.name}; training needs heads")
    return {f"heads.{k}": p for k, p in heads.named_parameters()}


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
