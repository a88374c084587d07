"""The depth lens on a tiny random Llama: zero-init is the logit lens, training moves the lensed layers'
distributions toward the last layer's and their query likelihood with it, artifacts round-trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from matryoshka.engine.executor import Executor
from matryoshka.engine.job import Job
from matryoshka.engine.plan import Plan
from matryoshka.model.artifact import load_artifact, read_manifest, save_artifact
from matryoshka.model.heads import QueryLikelihoodScorer
from matryoshka.model.loading import BackboneSpec, LoadedBackbone
from matryoshka.model.matryoshka_model import MatryoshkaModel
from matryoshka.model.prompt import Truncation
from matryoshka.model.width import WidthTarget
from matryoshka.train.lens import LensData, collect, fit_lens, layer_scores
from tests.conftest import tiny_llama
from tests.unit.test_train import GROUPS

LENSED = (2, 3)


def _model(tokenizer, lens_layers=LENSED) -> MatryoshkaModel:  # type: ignore[no-untyped-def]
    return MatryoshkaModel.from_hf(
        "tiny-llama",
        tiny_llama(),
        tokenizer,
        scoring="query_likelihood",
        head_layers=(*lens_layers, 4),
        lens_layers=lens_layers,
        fingerprint="a" * 64,
    )


def _scorer(model: MatryoshkaModel) -> QueryLikelihoodScorer:
    assert isinstance(model.scorer, QueryLikelihoodScorer)
    return model.scorer


def _scores(model: MatryoshkaModel, plan: Plan) -> list[float]:
    job = Job(GROUPS[0].query, [c.text for c in GROUPS[0].candidates], plan.resolve(model.info))
    (result,) = Executor(model).run([job])
    return [o.logit for o in result.outcomes]  # type: ignore[union-attr]


def _mean_kl(scorer: QueryLikelihoodScorer, data: LensData, layer: int) -> float:
    decoder = scorer.decoder
    with torch.no_grad():
        teacher = torch.log_softmax(decoder.lm_head(decoder.norm(data.hidden[4].float())), -1)
        student = torch.log_softmax(
            decoder.lm_head(decoder.norm(scorer.lens(layer, data.hidden[layer].float()))), -1
        )
        return float(torch.nn.functional.kl_div(student, teacher, log_target=True, reduction="batchmean"))


def test_an_untrained_lens_is_the_logit_lens(tiny_tokenizer) -> None:  # type: ignore[no-untyped-def]
    lensed = _model(tiny_tokenizer)
    plain = MatryoshkaModel.from_hf(
        "tiny-llama", tiny_llama(), tiny_tokenizer, scoring="query_likelihood", fingerprint="a" * 64
    )
    for depth in (2, 3, 4):
        assert _scores(lensed, Plan(depth=depth)) == pytest.approx(
            _scores(plain, Plan(depth=depth)), abs=1e-6
        )


def test_lens_layers_must_be_head_layers_below_the_last(tiny_tokenizer) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="below the last layer"):
        _model(tiny_tokenizer, lens_layers=(2, 4))
    with pytest.raises(ValueError, match="query-likelihood"):
        MatryoshkaModel.from_hf("tiny-llama", tiny_llama(), tiny_tokenizer, scoring="heads", lens_layers=(2,))


def test_collected_states_give_the_executors_query_likelihood(tiny_tokenizer) -> None:  # type: ignore[no-untyped-def]
    model = _model(tiny_tokenizer)
    data = collect(model, GROUPS, LENSED, Truncation(), bf16=False, progress=False)
    assert data.group_size == 4
    assert data.labels.tolist() == [1, 0, 0, 0] * len(GROUPS)
    for layer in (2, 3, 4):
        cached = layer_scores(_scorer(model), data, layer)[:4]  # bf16 states and LM-head matmul
        assert cached.tolist() == pytest.approx(_scores(model, Plan(depth=layer)), abs=3e-3), layer


def test_fitting_moves_every_lensed_layer_toward_the_last(tiny_tokenizer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model = _model(tiny_tokenizer)
    scorer = _scorer(model)
    data = collect(model, GROUPS, LENSED, Truncation(), bf16=False, progress=False)
    data.save(tmp_path / "states.safetensors")
    data = LensData.load(tmp_path / "states.safetensors")
    before = {layer: _mean_kl(scorer, data, layer) for layer in LENSED}
    history = fit_lens(scorer, data, epochs=30, batch_tokens=8, lr=1e-2, top_k=8, progress=False)
    assert history[-1] < history[0]
    for layer in LENSED:
        assert _mean_kl(scorer, data, layer) < 0.7 * before[layer], layer
    assert not any(p.requires_grad for p in scorer.lens.parameters())


def test_a_lens_artifact_reloads_to_identical_scores(tiny_tokenizer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model = _model(tiny_tokenizer)
    scorer = _scorer(model)
    with torch.no_grad():
        for p in scorer.lens.parameters():
            p.normal_(std=0.05)
    scorer.calibration.set(2, 3.0, 1.0)
    save_artifact(model, tmp_path / "artifact")
    assert read_manifest(tmp_path / "artifact")["lens_layers"] == list(LENSED)
    light = Plan(depth=3, width={1: WidthTarget(ratio=2.0)})
    want = {name: _scores(model, plan) for name, plan in (("d2", Plan(depth=2)), ("light", light))}
    spec = BackboneSpec("tiny-llama", "none", "none", "none", "decoder")
    loaded = load_artifact(
        tmp_path / "artifact", backbone=LoadedBackbone(spec, tiny_llama(), tiny_tokenizer, "a" * 64)
    )
    assert loaded.info.scoring == "query_likelihood"
    assert loaded.info.head_layers == (2, 3, 4)
    for name, plan in (("d2", Plan(depth=2)), ("light", light)):
        assert _scores(loaded, plan) == pytest.approx(want[name], abs=1e-5), name
    assert float(_scorer(loaded).calibration.calibrated_logits(2, torch.tensor([3.0]))) == pytest.approx(2.0)
