"""The pooled lens: cached per-text states equal the engine's sides, fits recover maps, caches resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from matryoshka.model.biencoder import CosineScorer, side_means
from matryoshka.model.matryoshka_model import MatryoshkaModel
from matryoshka.model.prompt import Truncation
from matryoshka.train import pooled_lens
from matryoshka.train.pooled_lens import PooledCache, fit_pooled_lens, install_pooled_lens, pooled_states
from tests.conftest import PASSAGES, tiny_bert

QUERY = "what is the capital of france"


def test_pooled_states_are_the_split_pair_sides(tiny_tokenizer: PreTrainedTokenizerFast) -> None:
    model = MatryoshkaModel.from_hf("tiny-bert", tiny_bert(), tiny_tokenizer, scoring="cosine")
    pooled = pooled_states(
        model.backbone.hf_model, tiny_tokenizer, [QUERY, *PASSAGES], max_tokens=192, batch=2
    )
    state = model.embed(model.encode(QUERY, PASSAGES, Truncation()))
    for layer in range(1, model.backbone.num_layers + 1):
        state = model.backbone.forward_layer(layer, state)
        query, passage = side_means(state)
        torch.testing.assert_close(passage, pooled[1:, layer - 1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(query, pooled[:1, layer - 1].expand_as(query), atol=1e-5, rtol=1e-5)


def test_fit_recovers_a_linear_map_and_the_scorer_applies_it() -> None:
    torch.manual_seed(0)
    shallow = torch.nn.functional.normalize(torch.randn(500, 8), dim=-1)
    rotation = torch.linalg.qr(torch.randn(8, 8)).Q
    pooled = torch.stack([shallow, shallow @ rotation.T], dim=1)  # (texts, 2 layers, 8)
    (weight, bias) = fit_pooled_lens(pooled, [1], ridge=1e-6)[1]
    torch.testing.assert_close(weight, rotation, atol=1e-3, rtol=1e-3)
    assert bias.abs().max() < 1e-3


def test_the_scorer_reads_shallow_layers_through_the_installed_map(
    tiny_tokenizer: PreTrainedTokenizerFast,
) -> None:
    model = MatryoshkaModel.from_hf(
        "tiny-bert", tiny_bert(), tiny_tokenizer, scoring="cosine", lens_layers=(1,)
    )
    scorer = model.scorer
    assert isinstance(scorer, CosineScorer)
    torch.manual_seed(1)
    weight, bias = torch.randn(64, 64), torch.randn(64)
    install_pooled_lens(scorer, {1: (weight, bias)})
    pooled = pooled_states(model.backbone.hf_model, tiny_tokenizer, [QUERY, *PASSAGES], max_tokens=192)
    query, passages = pooled[:1, 0].expand(len(PASSAGES), -1), pooled[1:, 0]

    def mapped(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(x, dim=-1) @ weight.T + bias

    expected = torch.nn.functional.cosine_similarity(mapped(query), mapped(passages), dim=-1)
    with torch.no_grad():
        torch.testing.assert_close(scorer.pair_logits(1, query, passages), expected, atol=1e-5, rtol=1e-5)
        raw = torch.nn.functional.cosine_similarity(query, passages, dim=-1)
        torch.testing.assert_close(scorer.pair_logits(2, query, passages), raw)  # no lens at layer 2


def test_cache_computes_each_text_once_and_resumes(
    tmp_path: Path, tiny_tokenizer: PreTrainedTokenizerFast, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tiny_bert()
    monkeypatch.setattr(pooled_lens, "CHUNK", 2)
    cache = PooledCache(tmp_path, "a" * 64, max_tokens=192)
    first = cache.get(model, tiny_tokenizer, PASSAGES[:3])
    assert len(list(cache.folder.glob("chunk-*.safetensors"))) == 2
    calls: list[int] = []
    real = pooled_lens.pooled_states

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(len(args[2]))
        return real(*args, **kwargs)

    monkeypatch.setattr(pooled_lens, "pooled_states", counting)
    again = PooledCache(tmp_path, "a" * 64, max_tokens=192).get(
        model, tiny_tokenizer, [*PASSAGES, PASSAGES[0]]
    )
    assert calls == [2]  # only the two new texts
    torch.testing.assert_close(again[:3], first, atol=1e-2, rtol=1e-2)  # stored in fp16
    torch.testing.assert_close(again[-1], again[0])
    other = PooledCache(tmp_path, "b" * 64, max_tokens=192)
    assert other.folder != cache.folder  # other weights never share states
