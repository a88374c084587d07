"""V-LoRA by segment-wise self-distillation (train/depth_compensation.py) on a tiny random Llama: cached
segments resume the frozen model exactly, training pulls the exits towards the last layer's distribution
and leaves the layers below the segment alone, a killed run resumes to the same adapters, and the CLI
writes an artifact the engine serves."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import PreTrainedTokenizerFast
from typer.testing import CliRunner

from matryoshka.cli import app
from matryoshka.engine.executor import Executor
from matryoshka.engine.job import Job
from matryoshka.engine.plan import Plan
from matryoshka.model import artifact
from matryoshka.model.artifact import load_artifact, read_manifest, save_artifact, set_fusion
from matryoshka.model.loading import BackboneSpec, LoadedBackbone
from matryoshka.model.matryoshka_model import MatryoshkaModel
from matryoshka.model.prompt import Truncation
from matryoshka.train.depth_compensation import (
    DepthDistillConfig,
    SegmentGroup,
    collect_segments,
    segment_logits,
    segment_loss,
    train_depth_compensation,
)
from tests.conftest import tiny_llama
from tests.unit.test_train import GROUPS
from tests.unit.test_train_groups import train_collection  # noqa: F401 (a fixture)


def _model(tokenizer: PreTrainedTokenizerFast, name: str = "tiny-llama") -> MatryoshkaModel:
    return MatryoshkaModel.from_hf(
        name,
        tiny_llama(),
        tokenizer,
        scoring="query_likelihood",
        head_layers=(2, 3, 4),
        lens_layers=(2, 3),
        fingerprint="a" * 64,
    )


def _logits(model: MatryoshkaModel, plan: Plan, query: str = GROUPS[0].query) -> torch.Tensor:
    job = Job(query, [c.text for c in GROUPS[0].candidates], plan.resolve(model.info))
    (result,) = Executor(model).run([job])
    return torch.tensor([o.logit for o in result.outcomes])  # type: ignore[union-attr]


def _loss(model: MatryoshkaModel, segments: list[SegmentGroup], exits: tuple[int, ...]) -> float:
    with torch.no_grad():
        return sum(float(segment_loss(model, g, exits, 32)) for g in segments) / len(segments)


def test_segments_resume_the_frozen_model_and_are_reused_only_when_they_match(
    tmp_path: Path, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    model = _model(tiny_tokenizer)
    file, said = tmp_path / "train.safetensors", list[str]()
    segments = collect_segments(model, GROUPS, 1, Truncation(), file, said.append)
    assert [g.state.layer for g in segments] == [1] * len(GROUPS)
    resumed = segment_logits(model, segments, (2, 3, 4))
    size = len(GROUPS[0].candidates)
    for layer in (2, 3, 4):  # layers 2..4 run on from the stored state score as the engine does
        assert resumed[layer][:size] == pytest.approx(_logits(model, Plan(depth=layer)).tolist(), abs=1e-4)
    again = collect_segments(model, GROUPS, 1, Truncation(), file, said.append)
    assert said == []  # read back, not recomputed
    assert all(torch.equal(a.state.hidden, b.state.hidden) for a, b in zip(segments, again, strict=True))
    assert all(torch.equal(a.teacher, b.teacher) for a, b in zip(segments, again, strict=True))
    other = collect_segments(model, GROUPS, 2, Truncation(), file, said.append)
    assert "recomputing" in said[0]
    assert other[0].state.layer == 2


def test_training_pulls_the_exits_towards_the_last_layer_above_the_segment_only(
    tmp_path: Path, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    model = _model(tiny_tokenizer)
    segments = collect_segments(model, GROUPS, 1, Truncation(), tmp_path / "s.safetensors", print)
    untouched = _logits(model, Plan(depth=2))
    before = {exit_: _loss(model, segments, (exit_,)) for exit_ in (2, 3)}
    torch.manual_seed(0)
    config = DepthDistillConfig(segment_from=1, epochs=8, lr=3e-3, lens_lr=3e-3, rank=4)
    history = train_depth_compensation(model, segments, config, tmp_path / "w", lambda _: None)
    assert len(history) == 8
    assert history[-1] < 0.2 * history[0]
    for exit_, loss in before.items():
        assert _loss(model, segments, (exit_,)) < 0.2 * loss, exit_
    assert _loss(model, segments, (4,)) < 0.1 * before[2]  # the last layer stays near the frozen model's
    compensation = model.backbone.compensation
    assert compensation is not None
    assert all(not a.use_v and not a.v_b.any() for a in compensation.adapters(1))  # frozen below
    assert all(a.use_v and a.v_b.any() for layer in (2, 3, 4) for a in compensation.adapters(layer))
    assert not torch.allclose(_logits(model, Plan(depth=2)), untouched)  # the engine runs the adapters
    assert all(not p.requires_grad for p in model.parameters())


def test_a_killed_run_resumes_to_the_adapters_of_an_uninterrupted_one(
    tmp_path: Path, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    segments = collect_segments(
        _model(tiny_tokenizer), GROUPS, 2, Truncation(), tmp_path / "s.safetensors", print
    )
    config = DepthDistillConfig(segment_from=2, epochs=2, rank=4, checkpoint_every=3)
    runs = {}
    for name, epochs in (("straight", [2]), ("resumed", [1, 2])):
        said: list[str] = []
        for n in epochs:  # a fresh model each call, as after a kill
            model = _model(tiny_tokenizer)
            torch.manual_seed(0)
            train_depth_compensation(
                model,
                segments,
                DepthDistillConfig(**{**vars(config), "epochs": n}),
                tmp_path / name,
                said.append,
            )
        assert model.backbone.compensation is not None
        runs[name] = (model.backbone.compensation.adapter_state(), model.scorer.state_dict(), said)
    assert f"resumed at step {len(GROUPS)}" in runs["resumed"][2]
    for key, value in runs["straight"][0].items():
        assert torch.allclose(value, runs["resumed"][0][key], atol=1e-6), key
    for key, value in runs["straight"][1].items():
        assert torch.allclose(value, runs["resumed"][1][key], atol=1e-6), key


def test_only_query_likelihood_models_and_segments_inside_the_depth_are_trained(
    tmp_path: Path, tiny_tokenizer: PreTrainedTokenizerFast, llama_model: MatryoshkaModel
) -> None:
    segments = collect_segments(
        _model(tiny_tokenizer), GROUPS[:1], 1, Truncation(), tmp_path / "s.safetensors", print
    )
    with pytest.raises(ValueError, match="query-likelihood"):
        train_depth_compensation(llama_model, segments, DepthDistillConfig(), tmp_path / "a", print)
    with pytest.raises(ValueError, match=r"segment_from must be in 1\.\.3"):
        train_depth_compensation(
            _model(tiny_tokenizer), segments, DepthDistillConfig(segment_from=4), tmp_path / "b", print
        )
    with pytest.raises(ValueError, match="no training groups"):
        train_depth_compensation(_model(tiny_tokenizer), [], DepthDistillConfig(), tmp_path / "c", print)


@pytest.fixture
def base_artifact(
    tmp_path: Path, tiny_tokenizer: PreTrainedTokenizerFast, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """A query-likelihood artifact with a depth lens, on a tiny Llama posing as the packaged SmolLM2."""
    spec = BackboneSpec("smollm2-135m", "none", "none", "none", "decoder")

    def fresh(*args: object, **kwargs: object) -> LoadedBackbone:  # a new copy per load, as from disk
        return LoadedBackbone(spec=spec, model=tiny_llama(), tokenizer=tiny_tokenizer, sha256="a" * 64)

    monkeypatch.setattr(artifact, "load_backbone", fresh)
    save_artifact(_model(tiny_tokenizer, "smollm2-135m"), tmp_path / "base")
    set_fusion(tmp_path / "base", {4: 0.5}, "somewhere:train")
    return tmp_path / "base"


def test_compensate_depth_writes_an_artifact_the_engine_serves_and_resumes(
    tmp_path: Path,
    train_collection: Path,  # noqa: F811 (the fixture imported above)
    base_artifact: Path,
) -> None:
    args = ["compensate-depth", "--artifact", str(base_artifact), "--out", str(tmp_path / "art")]
    args += ["--data", f"{train_collection}:train", "--negatives", "1", "--segment-from", "2"]
    args += ["--epochs", "2", "--lr", "0.03", "--rank", "4", "--dev-fraction", "0.34", "--dtype", "float32"]
    args += ["--workdir", str(tmp_path / "w")]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    manifest = read_manifest(tmp_path / "art")
    assert manifest["compensation"] == {
        "rank": 4,
        "alpha": 8.0,
        "ratios": [],
        "targets": ["q_proj", "k_proj", "v_proj", "o_proj"],
    }
    assert manifest["calibration"]["fusion"] == {"4": 0.5}  # carried over from the base
    assert manifest["calibration"]["version"] == "platt-dev-1q"
    assert manifest["training"]["settings"]["base"] == read_manifest(base_artifact)["training"]
    assert set(manifest["metrics"]["dev_mrr"]) == {"3", "4"}  # the exits above the segment
    assert len(manifest["metrics"]["kl_per_epoch"]) == 2
    model, base = load_artifact(tmp_path / "art"), load_artifact(base_artifact)
    query = "where is the cat"
    assert torch.equal(_logits(model, Plan(depth=2), query), _logits(base, Plan(depth=2), query))
    assert not torch.allclose(_logits(model, Plan(depth=3), query), _logits(base, Plan(depth=3), query))
    assert not torch.allclose(_logits(model, Plan(), query), _logits(base, Plan(), query))
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "resumed at step" in again.stderr


def test_bad_input_to_compensate_depth_fails_with_a_message(
    tmp_path: Path, eval_collection: Path, base_artifact: Path
) -> None:
    common = ["compensate-depth", "--out", str(tmp_path / "art"), "--negatives", "1", "--dtype", "float32"]
    common += ["--dev-fraction", "0.25", "--segment-from", "2"]
    test = ["--data", f"{eval_collection}:test"]
    for extra, message in [
        (["--artifact", str(tmp_path / "nowhere"), *test], "not an artifact"),
        (["--artifact", str(base_artifact), *test, "--segment-from", "4"], "segment_from must be in 1..3"),
        (["--artifact", str(base_artifact), "--data", str(eval_collection)], "DIR:SPLIT"),
        (["--artifact", str(base_artifact), *test], "0 training and 0 dev groups"),  # BM25 finds no negatives
        (["--artifact", str(base_artifact), *test, "--exits", "3,x"], "comma-separated layer numbers"),
    ]:
        result = CliRunner().invoke(app, [*common, *extra, "--workdir", str(tmp_path / "w")])
        assert result.exit_code != 0
        assert message in result.output


def test_chosen_exits_train_only_the_layers_up_to_the_deepest_of_them(
    tmp_path: Path, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    model = _model(tiny_tokenizer)
    segments = collect_segments(model, GROUPS, 1, Truncation(), tmp_path / "s.safetensors", print)
    before = _loss(model, segments, (2,))
    full = _logits(model, Plan(depth=3))
    torch.manual_seed(0)
    config = DepthDistillConfig(segment_from=1, exits=(2,), epochs=8, lr=3e-3, lens_lr=3e-3, rank=4)
    train_depth_compensation(model, segments, config, tmp_path / "w", lambda _: None)
    assert _loss(model, segments, (2,)) < 0.2 * before
    compensation = model.backbone.compensation
    assert compensation is not None
    assert all(a.use_v and a.v_b.any() for a in compensation.adapters(2))
    assert all(not a.use_v and not a.v_b.any() for layer in (1, 3, 4) for a in compensation.adapters(layer))
    assert model.scorer.lens.translators["3"].weight.abs().sum() == 0  # exit 3's lens untouched
    assert not torch.allclose(_logits(model, Plan(depth=3)), full)  # layer 3 reads adapted layer 2
    with pytest.raises(ValueError, match=r"exits \[1, 5\] are not head layers above layer 1"):
        train_depth_compensation(
            _model(tiny_tokenizer),
            segments,
            DepthDistillConfig(segment_from=1, exits=(1, 5)),
            tmp_path,
            print,
        )
