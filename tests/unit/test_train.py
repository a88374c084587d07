"""Training on a tiny random Llama: losses fall, checkpoints resume, artifacts reload to identical scores."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from matryoshka.engine.executor import Executor
from matryoshka.engine.job import Job
from matryoshka.engine.plan import Plan
from matryoshka.model.artifact import ArtifactError, Provenance, load_artifact, save_artifact
from matryoshka.model.compensation import CompensationConfig
from matryoshka.model.loading import BackboneSpec, LoadedBackbone
from matryoshka.model.matryoshka_model import MatryoshkaModel
from matryoshka.model.width import WidthTarget
from matryoshka.train.compensate import compensate
from matryoshka.train.groups import Candidate, TrainingGroup
from matryoshka.train.lora import LoraSettings
from matryoshka.train.self_distill import self_distill
from matryoshka.train.structures import FULL, Structure
from matryoshka.train.trainer import DistillConfig
from tests.conftest import tiny_llama

TEXTS = [
    ("where is the cat", "the cat sat on the mat", ["the sun is a hot star", "blue sky", "water is blue"]),
    (
        "what is the capital of france",
        "paris is the capital city of france",
        ["the dog ran", "blue sky", "the mat"],
    ),
    ("what is the sun", "the sun is a hot star", ["the cat sat", "paris is a city", "green tree"]),
    ("who ran to the park", "the dog ran to the park", ["the sun is hot", "river water", "the cat sat"]),
]
GROUPS = [
    TrainingGroup(
        f"q{i}", q, (Candidate("p", pos, 1), *(Candidate(f"n{j}", n, 0) for j, n in enumerate(negs)))
    )
    for i, (q, pos, negs) in enumerate(TEXTS)
]
STRUCTURES = (FULL, Structure(((2, WidthTarget(ratio=2.0)),)))


def _model(tokenizer) -> MatryoshkaModel:  # type: ignore[no-untyped-def]
    return MatryoshkaModel.from_hf(
        "tiny-llama", tiny_llama(), tokenizer, template="query_likelihood", fingerprint="a" * 64
    )


def _config(**kw) -> DistillConfig:  # type: ignore[no-untyped-def]
    base = dict(structures=STRUCTURES, groups_per_step=2, epochs=20, learning_rate=3e-2, checkpoint_every=5)
    return DistillConfig(**{**base, **kw})


def _scores(model: MatryoshkaModel, plan: Plan) -> list[float]:
    job = Job("where is the cat", [c.text for c in GROUPS[0].candidates], plan.resolve(model.info))
    (result,) = Executor(model).run([job])
    return [o.logit for o in result.outcomes]  # type: ignore[union-attr]


def test_heads_only_self_distillation_lowers_the_loss(tiny_tokenizer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model = _model(tiny_tokenizer)
    summary, lora = self_distill(model, GROUPS, _config(), tmp_path / "run", progress=False)
    assert lora is None
    assert summary.steps == 40
    first, last = summary.history[:4], summary.history[-4:]
    assert sum(s.loss for s in last) < sum(s.loss for s in first)
    assert sum(s.label for s in last) < 0.5 * sum(s.label for s in first)  # the positives come first
    # the frozen pass was cached: one file per group
    assert len(list((tmp_path / "run" / "features").glob("*.safetensors"))) == len(GROUPS)


def test_lora_self_distillation_lowers_the_loss_and_trains_the_backbone(
    tiny_tokenizer, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    model = _model(tiny_tokenizer)
    before = model.backbone.layer_module(1).self_attn.q_proj.weight.detach().clone()
    summary, lora = self_distill(
        model,
        GROUPS,
        _config(epochs=6, adapter_learning_rate=3e-3),
        tmp_path / "run",
        lora=LoraSettings(rank=2),
        progress=False,
    )
    assert lora is not None
    assert any(k.endswith("lora_B.weight") for k in lora.tensors)
    assert any(bool(v.abs().sum() > 0) for k, v in lora.tensors.items() if "lora_B" in k)
    assert summary.history[-1].loss < summary.history[0].loss
    # merged into the weights afterwards, exactly as loading an artifact does
    after = model.backbone.layer_module(1).self_attn.q_proj
    assert isinstance(after, torch.nn.Linear)
    assert not torch.equal(after.weight, before)


def test_training_resumes_from_its_checkpoint(tiny_tokenizer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    whole = _model(tiny_tokenizer)
    self_distill(whole, GROUPS, _config(epochs=5), tmp_path / "whole", progress=False)
    parted = _model(tiny_tokenizer)
    self_distill(parted, GROUPS, _config(epochs=5), tmp_path / "parted", progress=False, max_steps=5)
    again = _model(tiny_tokenizer)  # a new process: nothing but the work directory survives
    summary, _ = self_distill(again, GROUPS, _config(epochs=5), tmp_path / "parted", progress=False)
    assert summary.resumed_from == 5
    assert summary.steps == 10
    for (name, a), (_, b) in zip(
        whole.scorer.named_parameters(), again.scorer.named_parameters(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_compensation_trains_only_adapters(tiny_tokenizer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model = _model(tiny_tokenizer)
    self_distill(model, GROUPS, _config(epochs=5), tmp_path / "s1", progress=False)
    heads = {k: v.detach().clone() for k, v in model.scorer.heads.state_dict().items()}  # type: ignore[union-attr]
    summary, adapters = compensate(
        model,
        GROUPS,
        _config(epochs=4, adapter_learning_rate=3e-3),
        CompensationConfig(rank=2, ratios=(2.0,)),
        tmp_path / "s2",
        progress=False,
    )
    assert summary.history[-1].loss < summary.history[0].loss
    assert all(torch.equal(v, model.scorer.heads.state_dict()[k]) for k, v in heads.items())  # type: ignore[union-attr]
    trained = adapters.adapter_state()
    assert any(bool(v.abs().sum() > 0) for k, v in trained.items() if k.endswith("h_b"))
    assert any(bool(v.abs().sum() > 0) for k, v in trained.items() if k.endswith("v_b"))


def test_saved_artifact_reloads_to_identical_scores(tiny_tokenizer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model = _model(tiny_tokenizer)
    _, lora = self_distill(
        model, GROUPS, _config(epochs=3), tmp_path / "s1", lora=LoraSettings(rank=2), progress=False
    )
    compensate(
        model,
        GROUPS,
        _config(epochs=2),
        CompensationConfig(rank=2, ratios=(2.0,)),
        tmp_path / "s2",
        progress=False,
    )
    model.scorer.calibration.set(4, 2.0, -0.5)
    model.calibration_version = "fitted-test"
    save_artifact(model, tmp_path / "artifact", lora=lora, provenance=Provenance(command="pytest"))
    light = Plan(depth=4, width={2: WidthTarget(ratio=2.0)})
    want = {p: _scores(model, plan) for p, plan in (("full", Plan()), ("light", light))}

    loaded = load_artifact(tmp_path / "artifact", backbone=_tiny_backbone(tiny_tokenizer, "a" * 64))
    for name, plan in (("full", Plan()), ("light", light)):
        assert _scores(loaded, plan) == pytest.approx(want[name], abs=1e-5), name
    assert loaded.info.calibration_version == "fitted-test"
    assert loaded.info.fingerprint != "a" * 64  # the artifact hash joins the backbone's
    probability = loaded.scorer.calibration.probability(4, torch.tensor([1.0]))
    assert float(probability) == pytest.approx(float(torch.sigmoid(torch.tensor(1.0 / 2.0 - 0.5))))


def test_a_backbone_with_another_sha256_is_refused(tiny_tokenizer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model = _model(tiny_tokenizer)
    save_artifact(model, tmp_path / "artifact")
    with pytest.raises(ArtifactError, match="sha256"):
        load_artifact(tmp_path / "artifact", backbone=_tiny_backbone(tiny_tokenizer, "b" * 64))


def test_an_edited_tensor_file_is_refused(tiny_tokenizer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model = _model(tiny_tokenizer)
    save_artifact(model, tmp_path / "artifact")
    heads = tmp_path / "artifact" / "heads.safetensors"
    heads.write_bytes(heads.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(ArtifactError, match="differs from the manifest"):
        load_artifact(tmp_path / "artifact", backbone=_tiny_backbone(tiny_tokenizer, "a" * 64))


def _tiny_backbone(tokenizer, sha: str) -> LoadedBackbone:  # type: ignore[no-untyped-def]
    spec = BackboneSpec("tiny-llama", "none", "none", "none", "decoder")
    return LoadedBackbone(spec=spec, model=tiny_llama(), tokenizer=tokenizer, sha256=sha)


def test_a_workdir_with_passes_of_other_data_is_refused(tiny_tokenizer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    self_distill(_model(tiny_tokenizer), GROUPS, _config(epochs=1), tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match="use a new --workdir"):
        self_distill(_model(tiny_tokenizer), GROUPS[:2], _config(epochs=1), tmp_path / "run", progress=False)
