"""FlagEmbedding's own layerwise re-ranker class (LayerWiseMiniCPMForCausalLM), loaded under
transformers 5 with a test-only shim; docs/models.md "Parity" lists exactly what the shim stands in for.

FlagEmbedding 1.4.2 is installed with --no-deps (`make setup`): its package `__init__` imports every
embedder and needs `datasets`, so the modelling module is imported without running it. The module
imports `transformers.modeling_attn_mask_utils`, which transformers 5 removed; of its four names the
forward calls only the causal-mask builders, provided here as transformers 4 defined them (additive
float mask, dtype minimum where a key is masked).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

MODELS = "FlagEmbedding.inference.reranker.decoder_only.models"
LAYERWISE = f"{MODELS}.modeling_minicpm_reranker"
LIGHTWEIGHT = f"{MODELS}.gemma_model"
SHIMMED = "transformers.modeling_attn_mask_utils"


def causal_4d_mask(
    attention_mask: torch.Tensor | None,
    input_shape: tuple[int, int],
    inputs_embeds: torch.Tensor,
    past_key_values_length: int,
    sliding_window: int | None = None,
) -> torch.Tensor:
    """transformers 4's `_prepare_4d_causal_attention_mask`: [batch, 1, query, key] additive mask."""
    if sliding_window is not None:
        raise NotImplementedError("the layerwise forward never passes a sliding window")
    batch, query = input_shape
    keys = query + past_key_values_length
    allowed = torch.ones(query, keys, dtype=torch.bool).tril(past_key_values_length)[None, None]
    if attention_mask is not None:
        allowed = allowed & attention_mask[:, None, None, :].bool()
    dtype = inputs_embeds.dtype
    zeros = torch.zeros(batch, 1, query, keys, dtype=dtype, device=inputs_embeds.device)
    return zeros.masked_fill(~allowed.to(inputs_embeds.device), torch.finfo(dtype).min)


def _unused(name: str) -> Any:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{name}: only FlagEmbedding's deprecated helpers use it; not shimmed")

    return refuse


def _shim_mask_utils() -> None:
    shim = types.ModuleType(SHIMMED)
    shim._prepare_4d_causal_attention_mask = causal_4d_mask  # type: ignore[attr-defined]
    # the sdpa variant may return None where no mask is needed; the full mask gives the same attention
    shim._prepare_4d_causal_attention_mask_for_sdpa = causal_4d_mask  # type: ignore[attr-defined]
    shim._prepare_4d_attention_mask = _unused("_prepare_4d_attention_mask")  # type: ignore[attr-defined]
    shim.AttentionMaskConverter = _unused("AttentionMaskConverter")  # type: ignore[attr-defined]
    sys.modules.setdefault(SHIMMED, shim)


def _package_without_init() -> None:
    """Register FlagEmbedding's packages down to the modelling module without running their
    `__init__` files (they import the whole library and its optional dependencies)."""
    if MODELS in sys.modules:
        return
    root = importlib.util.find_spec("FlagEmbedding")
    if root is None or root.submodule_search_locations is None:
        raise ImportError("FlagEmbedding is not installed (make setup installs it, test-only)")
    base = Path(next(iter(root.submodule_search_locations)))
    parts = MODELS.split(".")
    for depth in range(1, len(parts) + 1):
        name = ".".join(parts[:depth])
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = [str(base.joinpath(*parts[1:depth]))]
            sys.modules[name] = package
    utils = types.ModuleType("FlagEmbedding.utils")
    utils.__path__ = [str(base / "utils")]
    sys.modules.setdefault("FlagEmbedding.utils", utils)


def layerwise_class() -> Any:
    """FlagEmbedding's LayerWiseMiniCPMForCausalLM (raises ImportError when FlagEmbedding is absent)."""
    _shim_mask_utils()
    _package_without_init()
    return importlib.import_module(LAYERWISE).LayerWiseMiniCPMForCausalLM


def load_layerwise(directory: Path) -> Any:
    """Their model built by their own constructor (fp32, eager attention) with the directory's weights
    loaded strictly by name, in eval mode.

    Three transformers 5 changes are bridged without touching their code: a config's `rope_scaling` is
    rewritten into a dict of rope parameters (their attention reads `rope_scaling["type"]` unless it is
    None, as the published config has it); `_tied_weights_keys` must be a mapping (theirs is the v4 list
    naming an `lm_head.weight` their per-layer heads do not have: nothing is tied); and `from_pretrained`
    now builds on the meta device, which leaves the rotary tables their constructor computes as
    uninitialised buffers, so the model is constructed normally and the weights loaded after."""
    base = layerwise_class()
    cls = type(base.__name__, (base,), {"_tied_weights_keys": {}})
    config = base.config_class.from_pretrained(directory)
    config.rope_scaling = None
    config._attn_implementation = "eager"
    model = cls(config).to(torch.float32)
    model.load_state_dict(load_file(directory / "model.safetensors"), strict=True)
    return model.eval()


def layerwise_reference(model: Any, input_ids: list[int], cutoff_layers: list[int]) -> dict[int, float]:
    """Their forward on one unpadded sequence: the last token's score at each cutoff layer."""
    ids = torch.tensor([input_ids])
    with torch.no_grad():
        out = model(
            input_ids=ids, attention_mask=torch.ones_like(ids), cutoff_layers=cutoff_layers, use_cache=False
        )
    return {
        layer: float(logits[0, -1].reshape(-1)[0])
        for layer, logits in zip(cutoff_layers, out.logits, strict=True)
    }


def _v4_decoder_layer() -> type:
    """transformers 5's Gemma2DecoderLayer called the transformers 4 way, as CostWiseGemmaModel calls it.

    In 4.x the layer computed its own rotary embedding from `position_ids`, masked its sliding window
    itself and returned a tuple; 5.x takes `position_embeddings` from the model, leaves the sliding
    window to the model's masks and returns the hidden states. The layer's math is untouched."""
    from transformers.models.gemma2.modeling_gemma2 import Gemma2DecoderLayer, Gemma2RotaryEmbedding

    class V4CallingConvention(Gemma2DecoderLayer):  # type: ignore[misc]
        def __init__(self, config: Any, layer_idx: int) -> None:
            super().__init__(config, layer_idx)
            self.rotary = Gemma2RotaryEmbedding(config)
            self.window = (
                config.sliding_window if config.layer_types[layer_idx] == "sliding_attention" else None
            )

        def forward(  # type: ignore[override]
            self,
            hidden_states: torch.Tensor,
            attention_mask: torch.Tensor | None = None,
            position_ids: torch.Tensor | None = None,
            **v4_only: Any,  # past_key_value, output_attentions, use_cache, cache_position: unused here
        ) -> tuple[torch.Tensor]:
            if self.window is not None and hidden_states.shape[1] > self.window:
                raise NotImplementedError("sequences longer than the sliding window are not bridged")
            assert position_ids is not None
            rope = self.rotary(hidden_states, position_ids)
            return (super().forward(hidden_states, rope, attention_mask=attention_mask),)

    return V4CallingConvention


def _cache_named(output: type) -> type:
    """Their output dataclass with its `past_key_values` field named `cache`: transformers 5 renames
    that keyword to `cache` in every ModelOutput constructor, so a dataclass declaring the old field
    cannot be built; `.past_key_values` still reads it."""
    from transformers.utils import ModelOutput

    fields = [
        ("cache" if f.name == "past_key_values" else f.name, Any, dataclasses.field(default=None))
        for f in dataclasses.fields(output)
    ]
    return dataclasses.make_dataclass(output.__name__, fields, bases=(ModelOutput,))


def load_lightweight(directory: Path) -> Any:
    """FlagEmbedding's CostWiseGemmaForCausalLM built by its own constructor (fp32, eager attention)
    with the directory's weights loaded strictly by name, in eval mode.

    Bridged without touching their code: the `transformers.modeling_attn_mask_utils` import (their mask
    code never calls it), `_tied_weights_keys` (as for the layerwise class), transformers 4's calling
    convention of the Gemma2DecoderLayer their model stacks (`_v4_decoder_layer`), their two output
    dataclasses (`_cache_named`), and construction off the meta device (the rotary tables are buffers
    computed at construction)."""
    _shim_mask_utils()
    _package_without_init()
    module = importlib.import_module(LIGHTWEIGHT)
    module.Gemma2DecoderLayer = _v4_decoder_layer()  # the name their model's constructor looks up
    for name in ("CostWiseModelOutputWithPast", "CostWiseCausalLMOutputWithPast"):
        setattr(module, name, _cache_named(getattr(module, name)))  # looked up when their forward returns
    base = module.CostWiseGemmaForCausalLM
    cls = type(base.__name__, (base,), {"_tied_weights_keys": {}})
    config = base.config_class.from_pretrained(directory)
    config._attn_implementation = "eager"
    model = cls(config).to(torch.float32)
    model.load_state_dict(load_file(directory / "model.safetensors"), strict=True)
    return model.eval()


def lightweight_reference(
    model: Any,
    input_ids: list[int],
    lengths: tuple[int, int],
    cutoff_layers: list[int],
    compress_layers: list[int],
    compress_ratio: int,
) -> dict[int, float]:
    """Their forward on one unpadded sequence (query and prompt lengths as their inference passes
    them): the last token's score at each cutoff layer."""
    ids = torch.tensor([input_ids])
    with torch.no_grad():
        out = model(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            cutoff_layers=cutoff_layers,
            compress_layer=compress_layers,
            compress_ratio=compress_ratio,
            query_lengths=[lengths[0]],
            prompt_lengths=[lengths[1]],
            output_hidden_states=True,
            use_cache=False,
        )
    return {layer: float(logits[0, -1]) for layer, logits in zip(cutoff_layers, out.logits, strict=True)}
