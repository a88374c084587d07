"""Factorized compensation (paper section 3.3): V-LoRA per layer plus H-LoRA per width ratio.

Every adapted projection W of layer l carries one V-LoRA (A_v, B_v) and one H-LoRA (A_k, B_k) per
trained compression ratio k. A row whose passage has been compressed by factor c runs
W x + s (B_v A_v x + B_k A_k x) with k the trained ratio nearest to c (in log space, where "no
compression" competes as ratio 1 and selects no H-LoRA). The sum is formed on the fly per row, so rows
of different sub-structures share one batch and no per-configuration weight merge is ever stored.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from matryoshka.model.backbone import Backbone

DECODER_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
ADAPTER_TENSORS = ("v_a", "v_b", "h_a", "h_b")  # the trainable (and stored) tensors of an adapter
ENCODER_TARGETS = ("query", "key", "value", "dense")


@dataclass(frozen=True)
class CompensationConfig:
    """Rank and scale of every adapter, the trained ratios and the projections adapted."""

    rank: int = 8
    alpha: float = 16.0
    ratios: tuple[float, ...] = (2.0, 4.0)
    targets: tuple[str, ...] = DECODER_TARGETS

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank}")
        if any(not r > 1 for r in self.ratios) or len(set(self.ratios)) != len(self.ratios):
            raise ValueError(f"ratios must be distinct and > 1, got {self.ratios}")

    @property
    def scale(self) -> float:
        """LoRA scaling alpha / rank."""
        return self.alpha / self.rank

    def slots(self, compression: Tensor) -> Tensor:
        """(batch,) H-LoRA slot of each row: index into `ratios`, or -1 for none."""
        if not self.ratios:
            return torch.full_like(compression, -1, dtype=torch.long)
        points = torch.tensor((1.0, *self.ratios), device=compression.device).log()
        distance = (compression.clamp(min=1.0).log().unsqueeze(1) - points.unsqueeze(0)).abs()
        return distance.argmin(dim=1) - 1


class FactorizedLoRALinear(nn.Module):
    """A frozen linear layer plus its V-LoRA and per-ratio H-LoRA; `slots` picks each row's H-LoRA."""

    def __init__(self, base: nn.Linear, config: CompensationConfig) -> None:
        super().__init__()
        self.base = base
        self.scale = config.scale
        rank, n = config.rank, len(config.ratios)
        fan_in, fan_out = base.in_features, base.out_features
        dtype = torch.float32
        # Standard LoRA init: A random, B zero, so a fresh adapter changes nothing.
        self.v_a = nn.Parameter(torch.randn(rank, fan_in, dtype=dtype) / math.sqrt(fan_in))
        self.v_b = nn.Parameter(torch.zeros(fan_out, rank, dtype=dtype))
        self.h_a = nn.Parameter(torch.randn(n, rank, fan_in, dtype=dtype) / math.sqrt(fan_in))
        self.h_b = nn.Parameter(torch.zeros(n, fan_out, rank, dtype=dtype))
        self.slots: Tensor | None = None  # (batch,) set per layer call by Compensation.select
        self.use_v = True
        self.use_h = True

    def forward(self, x: Tensor) -> Tensor:
        # The adapters run in the activations' dtype (fp32 master weights cast per call): on CPUs with
        # bf16 units an fp32 product costs ~25x a bf16 one and would dominate a bf16 model's layer.
        out: Tensor = self.base(x)
        dtype = x.dtype
        if self.use_v:
            out = out + self.scale * ((x @ self.v_a.to(dtype).T) @ self.v_b.to(dtype).T)
        slots = self.slots
        if self.use_h and slots is not None and bool((slots >= 0).any()):
            # Rows are the first dimension: (batch, length, in) in layers, (batch, in) for anchor rows.
            rows = x if x.dim() == 3 else x.unsqueeze(1)
            pick = slots.clamp(min=0)
            low = torch.einsum("bli,bri->blr", rows, self.h_a[pick].to(dtype))
            h = torch.einsum("blr,bor->blo", low, self.h_b[pick].to(dtype))
            h = h * (slots >= 0).view(-1, 1, 1).to(dtype)
            out = out + self.scale * (h if x.dim() == 3 else h.squeeze(1))
        return out

    def delta_weight(self, slot: int | None) -> Tensor:
        """The summed adapter as a dense weight update for one sub-structure (V + H of `slot`)."""
        delta = torch.zeros_like(self.base.weight, dtype=torch.float32)
        if self.use_v:
            delta = delta + self.v_b @ self.v_a
        if slot is not None and slot >= 0 and self.use_h:
            delta = delta + self.h_b[slot] @ self.h_a[slot]
        return self.scale * delta


class Compensation(nn.Module):
    """Installs factorized adapters into a backbone's layers and routes each row to its H-LoRA."""

    def __init__(self, backbone: Backbone, config: CompensationConfig) -> None:
        super().__init__()
        self.config = config
        self.layers = nn.ModuleDict()
        for layer in range(1, backbone.num_layers + 1):
            wrapped = nn.ModuleDict()
            for path, linear in _target_linears(backbone.layer_module(layer), config.targets):
                adapter = FactorizedLoRALinear(linear, config).to(linear.weight.device)
                _replace(backbone.layer_module(layer), path, adapter)
                wrapped[path.replace(".", "__")] = adapter
            if not wrapped:
                raise ValueError(f"layer {layer} has none of the target projections {config.targets}")
            self.layers[str(layer)] = wrapped
        backbone.compensation = self

    def select(self, layer: int, compression: Tensor) -> None:
        """Route the rows about to run `layer` to the H-LoRA of their compression factor."""
        slots = self.config.slots(compression)
        for adapter in self.adapters(layer):
            adapter.slots = slots

    def adapters(self, layer: int | None = None) -> Iterator[FactorizedLoRALinear]:
        """The adapters of one layer, or of all layers."""
        keys = [str(layer)] if layer is not None else list(self.layers.keys())
        for key in keys:
            for module in self._layer(key).values():
                assert isinstance(module, FactorizedLoRALinear)
                yield module

    def _layer(self, key: str) -> nn.ModuleDict:
        found = self.layers[key]
        assert isinstance(found, nn.ModuleDict)
        return found

    def enable(self, *, vertical: bool = True, horizontal: bool = True) -> None:
        """Switch the V-LoRA and H-LoRA terms on or off (ablations and equivalence checks)."""
        for adapter in self.adapters():
            adapter.use_v = vertical
            adapter.use_h = horizontal

    def adapter_state(self) -> dict[str, Tensor]:
        """Only the adapter tensors (what an artifact stores), keyed by layer and projection."""
        return {
            f"{layer}.{name}.{p}": getattr(module, p).detach().cpu().contiguous()
            for layer in self.layers
            for name, module in self._layer(layer).items()
            for p in ADAPTER_TENSORS
        }

    def load_adapter_state(self, tensors: dict[str, Tensor]) -> None:
        """Load tensors made by `adapter_state`; every key must match in name and shape."""
        own = self.adapter_state()
        if set(own) != set(tensors):
            missing, extra = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
            raise ValueError(
                f"compensation tensors do not match: missing {missing[:3]}, unexpected {extra[:3]}"
            )
        for key, value in tensors.items():
            layer, name, p = key.split(".")
            param = getattr(self._layer(layer)[name], p)
            if param.shape != value.shape:
                raise ValueError(
                    f"compensation tensor {key}: shape {tuple(value.shape)}, want {tuple(param.shape)}"
                )
            with torch.no_grad():
                param.copy_(value)
        for adapter in self.adapters():  # an exactly zero V-LoRA (H-LoRA-only training) costs nothing
            adapter.use_v = bool(adapter.v_b.any())


def _target_linears(block: nn.Module, targets: Sequence[str]) -> list[tuple[str, nn.Linear]]:
    found = []
    for path, module in block.named_modules():
        if isinstance(module, nn.Linear) and path.split(".")[-1] in targets:
            found.append((path, module))
    return found


def _replace(root: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, name, new)
