"""Factorized compensation: per-row V + H adapters, their sum, routing by compression, and the codec."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from matryoshka.cache.codec import decode_row, encode_row
from matryoshka.model.compensation import Compensation, CompensationConfig, FactorizedLoRALinear
from matryoshka.model.matryoshka_model import MatryoshkaModel
from matryoshka.model.prompt import Truncation
from matryoshka.model.width import WidthTarget, merge_width
from tests.conftest import PASSAGES


def _randomise(adapter: FactorizedLoRALinear, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in (adapter.v_a, adapter.v_b, adapter.h_a, adapter.h_b):
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def test_fresh_adapters_change_nothing() -> None:
    base = nn.Linear(8, 6)
    adapter = FactorizedLoRALinear(base, CompensationConfig(rank=2))
    adapter.slots = torch.tensor([0, 1])
    x = torch.randn(2, 3, 8)
    assert torch.equal(adapter(x), base(x))


def test_summed_v_and_h_equal_the_separately_applied_adapters() -> None:
    base = nn.Linear(8, 6)
    adapter = FactorizedLoRALinear(base, CompensationConfig(rank=2, ratios=(2.0, 4.0)))
    _randomise(adapter)
    x = torch.randn(3, 5, 8)
    adapter.slots = torch.tensor([0, 1, -1])
    both = adapter(x)
    adapter.use_h = False
    v_only = adapter(x)
    adapter.use_h, adapter.use_v = True, False
    h_only = adapter(x)
    adapter.use_v = True
    plain = base(x)
    torch.testing.assert_close(both, plain + (v_only - plain) + (h_only - plain), rtol=1e-5, atol=1e-5)
    # and each row equals a dense weight W + delta(V) + delta(H of its ratio): no per-configuration merge
    for row, slot in enumerate([0, 1, None]):
        dense = nn.functional.linear(x[row], base.weight + adapter.delta_weight(slot), base.bias)
        torch.testing.assert_close(both[row], dense, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(both[0], both[1])  # rows really took different H-LoRA


def test_two_dimensional_inputs_route_per_row() -> None:
    base = nn.Linear(8, 6)
    adapter = FactorizedLoRALinear(base, CompensationConfig(rank=2))
    _randomise(adapter, 1)
    adapter.slots = torch.tensor([1, -1])
    x = torch.randn(2, 8)
    torch.testing.assert_close(adapter(x), adapter(x.unsqueeze(1)).squeeze(1))


@pytest.mark.parametrize(
    ("factor", "slot"), [(1.0, -1), (1.3, -1), (1.5, 0), (2.0, 0), (2.7, 0), (3.0, 1), (4.0, 1), (9.0, 1)]
)
def test_rows_pick_the_nearest_trained_ratio_in_log_space(factor: float, slot: int) -> None:
    config = CompensationConfig(ratios=(2.0, 4.0))
    assert int(config.slots(torch.tensor([factor]))[0]) == slot


def test_merges_record_the_compression_that_selects_h_lora(llama_model: MatryoshkaModel) -> None:
    pairs = llama_model.encode("where is the cat", PASSAGES[:3], Truncation())
    state = llama_model.embed(pairs)
    state = llama_model.backbone.forward_layer(1, state)
    attention = llama_model.backbone.anchor_attention(2, state)
    merged = merge_width(state, attention, WidthTarget(ratio=2.0))
    passage = lambda s: (s.segments == 2).sum(dim=1).float()  # noqa: E731
    torch.testing.assert_close(merged.compression_factors, passage(state) / passage(merged))
    again = merged.row(0)
    assert again.compression == pytest.approx(float(merged.compression_factors[0]))
    assert decode_row(encode_row(again)).compression == pytest.approx(again.compression)


def test_compensated_model_runs_rows_of_different_widths_in_one_batch(llama_model: MatryoshkaModel) -> None:
    compensation = Compensation(llama_model.backbone, CompensationConfig(rank=2, ratios=(2.0,)))
    for adapter in compensation.adapters():
        _randomise(adapter, 2)
    pairs = llama_model.encode("where is the cat", PASSAGES[:2], Truncation())
    state = llama_model.embed(pairs)
    state.compression = torch.tensor([1.0, 2.0])
    together = llama_model.backbone.forward_layer(1, state).hidden
    alone = [llama_model.backbone.forward_layer(1, state.select(torch.tensor([i]))).hidden for i in (0, 1)]
    torch.testing.assert_close(together[0, : alone[0].shape[1]], alone[0][0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(together[1, : alone[1].shape[1]], alone[1][0], rtol=1e-4, atol=1e-4)
    compensation.enable(horizontal=False)
    without_h = llama_model.backbone.forward_layer(1, state).hidden
    assert torch.allclose(without_h[0], together[0])
    assert not torch.allclose(without_h[1], together[1])


def test_adapter_state_round_trips_and_rejects_mismatches(llama_model: MatryoshkaModel) -> None:
    compensation = Compensation(llama_model.backbone, CompensationConfig(rank=2))
    for adapter in compensation.adapters():
        _randomise(adapter, 3)
    state = compensation.adapter_state()
    for adapter in compensation.adapters():
        with torch.no_grad():
            adapter.v_b.zero_()
    compensation.load_adapter_state(state)
    assert all(torch.equal(state[k], v) for k, v in compensation.adapter_state().items())
    with pytest.raises(ValueError, match="do not match"):
        compensation.load_adapter_state({k: v for k, v in list(state.items())[1:]})
