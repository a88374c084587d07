"""Split-pair (bi-encoder) scoring: every layer's cosine equals a plain per-sentence BERT forward."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from matryoshka.engine.executor import Executor
from matryoshka.engine.job import Job, JobResult
from matryoshka.engine.plan import Plan
from matryoshka.model.artifact import load_artifact, save_artifact
from matryoshka.model.biencoder import CosineScorer, side_means
from matryoshka.model.loading import BackboneSpec, LoadedBackbone
from matryoshka.model.matryoshka_model import MatryoshkaModel
from matryoshka.model.prompt import Truncation
from matryoshka.model.width import WidthTarget
from tests.conftest import PASSAGES, tiny_bert, tiny_llama

QUERY = "what is the capital of france"


def split_model(tokenizer: PreTrainedTokenizerFast, lens_layers: tuple[int, ...] = ()) -> MatryoshkaModel:
    return MatryoshkaModel.from_hf(
        "tiny-bert", tiny_bert(), tokenizer, scoring="cosine", fingerprint="test", lens_layers=lens_layers
    )


def reference_cosines(model: MatryoshkaModel, tokenizer: PreTrainedTokenizerFast) -> torch.Tensor:
    """(layers, passages) cosine of mean-pooled sentences, each encoded alone by the plain HF model."""

    def pooled(text: str) -> torch.Tensor:
        ids = [tokenizer.cls_token_id, *tokenizer(text, add_special_tokens=False)["input_ids"]]
        ids.append(tokenizer.sep_token_id)
        with torch.no_grad():
            out = model.backbone.hf_model(torch.tensor([ids]), output_hidden_states=True)
        return torch.stack([h[0].mean(dim=0) for h in out.hidden_states[1:]])  # (layers, hidden)

    query = pooled(QUERY)
    passages = torch.stack([pooled(p) for p in PASSAGES], dim=1)  # (layers, passages, hidden)
    return torch.nn.functional.cosine_similarity(query.unsqueeze(1), passages, dim=-1)


def run(model: MatryoshkaModel, plan: Plan) -> JobResult:
    (result,) = Executor(model).run([Job(QUERY, PASSAGES, plan.resolve(model.info))])
    assert isinstance(result, JobResult)
    return result


def logits(result: JobResult) -> torch.Tensor:
    return torch.tensor([o.logit for o in sorted(result.outcomes, key=lambda o: o.index)])


def test_every_layer_equals_the_plain_bi_encoder(tiny_tokenizer: PreTrainedTokenizerFast) -> None:
    model = split_model(tiny_tokenizer)
    expected = reference_cosines(model, tiny_tokenizer)
    for depth in range(1, model.backbone.num_layers + 1):
        result = run(model, Plan(depth=depth))
        torch.testing.assert_close(logits(result), expected[depth - 1], atol=1e-5, rtol=1e-5)
        assert all(o.exit_layer == depth for o in result.outcomes)


def test_passage_merging_leaves_the_query_side_untouched(tiny_tokenizer: PreTrainedTokenizerFast) -> None:
    model = split_model(tiny_tokenizer)
    full = run(model, Plan())
    narrow = run(model, Plan(width={1: WidthTarget(ratio=2.0)}))
    assert 0 < narrow.usage.flops_saved < 0.5
    assert narrow.usage.layer_tokens < full.usage.layer_tokens
    states = {}
    for name, plan in (("full", Plan()), ("narrow", Plan(width={1: WidthTarget(ratio=2.0)}))):
        (result,) = Executor(model).run([Job(QUERY, PASSAGES, plan.resolve(model.info), keep_states=True)])
        assert isinstance(result, JobResult)
        states[name] = result.states
    for index, row in states["full"].items():
        other = states["narrow"][index]
        assert other.length <= row.length
        n_query = int((row.segments == 1).sum()) + 2
        torch.testing.assert_close(other.hidden[:n_query], row.hidden[:n_query], atol=1e-5, rtol=1e-5)


def test_untrained_lens_is_the_raw_cosine_and_the_last_layer_has_none(
    tiny_tokenizer: PreTrainedTokenizerFast,
) -> None:
    model = split_model(tiny_tokenizer, lens_layers=(1, 2))
    plain = split_model(tiny_tokenizer)
    torch.testing.assert_close(logits(run(model, Plan(depth=2))), logits(run(plain, Plan(depth=2))))
    with pytest.raises(ValueError, match="below the last layer"):
        split_model(tiny_tokenizer, lens_layers=(3,))
    with pytest.raises(ValueError, match="BERT-style encoder"):
        MatryoshkaModel.from_hf("tiny-llama", tiny_llama(), tiny_tokenizer, scoring="cosine")


def test_side_means_ignore_padding(tiny_tokenizer: PreTrainedTokenizerFast) -> None:
    model = split_model(tiny_tokenizer)
    together = model.embed(model.encode(QUERY, PASSAGES, Truncation()))
    for i, passage in enumerate(PASSAGES):
        alone = model.embed(model.encode(QUERY, [passage], Truncation()))
        q_all, p_all = side_means(together)
        q_one, p_one = side_means(alone)
        torch.testing.assert_close(q_all[i], q_one[0])
        torch.testing.assert_close(p_all[i], p_one[0])


def test_artifact_round_trip_keeps_the_lens(tmp_path: Path, tiny_tokenizer: PreTrainedTokenizerFast) -> None:
    model = split_model(tiny_tokenizer, lens_layers=(1, 2))
    scorer = model.scorer
    assert isinstance(scorer, CosineScorer)
    with torch.no_grad():
        for p in scorer.lens.parameters():
            p.add_(0.01 * torch.randn_like(p))
    scorer.calibration.set(2, 0.05, -1.0)
    save_artifact(model, tmp_path / "art")
    spec = BackboneSpec("tiny-bert", "none", "none", "none", "encoder")
    hf_model = model.backbone.hf_model
    backbone = LoadedBackbone(spec=spec, model=hf_model, tokenizer=tiny_tokenizer, sha256="test")
    loaded = load_artifact(tmp_path / "art", backbone=backbone)
    assert isinstance(loaded.scorer, CosineScorer)
    assert loaded.scorer.lens_layers == (1, 2)
    assert loaded.template.name == "split_pair"
    torch.testing.assert_close(logits(run(loaded, Plan(depth=2))), logits(run(model, Plan(depth=2))))
    assert float(loaded.scorer.calibration.temperature[1]) == pytest.approx(0.05)
