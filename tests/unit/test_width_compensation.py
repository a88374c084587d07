"""Width compensation for split-pair scoring (train/width_compensation.py) and the plans an artifact
defines (engine/named_plans.py): a tiny BERT, a tiny collection, the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import typer
from transformers import PreTrainedTokenizerFast
from typer.testing import CliRunner

from matryoshka.cli import app
from matryoshka.cli.common import parse_width
from matryoshka.cli.minilm import parse_plan, parse_structures
from matryoshka.engine.executor import Executor
from matryoshka.engine.job import Job, JobResult
from matryoshka.engine.named_plans import ExitConfig, named_plan
from matryoshka.engine.plan import CascadeExit, Plan
from matryoshka.model import artifact
from matryoshka.model.artifact import ArtifactError, load_artifact, read_manifest, save_artifact, set_fusion
from matryoshka.model.loading import BackboneSpec, LoadedBackbone
from matryoshka.model.matryoshka_model import MatryoshkaModel, PlanSpec
from matryoshka.model.width import WidthTarget
from matryoshka.train.width_compensation import (
    WidthDistillConfig,
    candidate_groups,
    distill_loss,
    side_embeddings,
    train_width_compensation,
)
from tests.conftest import PASSAGES, tiny_bert

QUERY = "what is the capital of france"
MERGED = Plan(width={1: WidthTarget(ratio=2.0)})


def plan_spec(text: str) -> tuple[str, PlanSpec]:
    name, fields = parse_plan(text)
    return name, PlanSpec.from_json(fields)


def test_width_specs_parse_and_bad_ones_are_refused() -> None:
    assert parse_structures("1:2, 3:2") == ({1: WidthTarget(ratio=2.0), 3: WidthTarget(ratio=2.0)},)
    assert parse_structures("1:2;1:2,3:2") == (
        {1: WidthTarget(ratio=2.0)},
        {1: WidthTarget(ratio=2.0), 3: WidthTarget(ratio=2.0)},
    )
    assert plan_spec("adaptive=1:2,3:2,exit-from=5") == (
        "adaptive",
        PlanSpec(width=((1, 2.0), (3, 2.0)), exit_min_layer=5),
    )
    assert plan_spec("light=depth=4") == ("light", PlanSpec(depth=4))
    assert plan_spec("adaptive=2:2,cascade-top=30,cascade-from=4") == (
        "adaptive",
        PlanSpec(width=((2, 2.0),), cascade_top_n=30, cascade_min_layer=4),
    )
    with pytest.raises(ValueError, match="go together"):
        plan_spec("adaptive=2:2,cascade-top=30")
    for bad in ("2@1", "1:x", "x:2", ""):
        with pytest.raises(typer.BadParameter, match="LAYER:RATIO"):
            parse_width([bad])
    with pytest.raises(typer.BadParameter, match="no width schedule"):
        parse_structures(" ; ")
    with pytest.raises(typer.BadParameter, match="unknown option"):
        parse_plan("light=1:2,exit=5")
    with pytest.raises(typer.BadParameter, match="unknown option"):
        parse_plan("light=1:=128")  # a plan's width is LAYER:RATIO only
    with pytest.raises(typer.BadParameter, match="NAME="):
        parse_plan("1:2")


def split_model(tokenizer: PreTrainedTokenizerFast) -> MatryoshkaModel:
    return MatryoshkaModel.from_hf(
        "minilm-l6", tiny_bert(), tokenizer, scoring="cosine", fingerprint="a" * 64
    )


def logits(model: MatryoshkaModel, plan: Plan) -> torch.Tensor:
    (result,) = Executor(model).run([Job(QUERY, PASSAGES, plan.resolve(model.info))])
    assert isinstance(result, JobResult)
    return torch.tensor([o.logit for o in sorted(result.outcomes, key=lambda o: o.index)])


def test_training_pulls_merged_rows_towards_the_full_width_and_leaves_the_full_width_alone(
    tmp_path: Path, eval_collection: Path, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    model = split_model(tiny_tokenizer)
    before_full, before_merged = logits(model, Plan()), logits(model, MERGED)
    groups = candidate_groups(model, [f"{eval_collection}:test"], depth=4, max_queries=None)
    assert groups
    assert all(2 <= len(g.rows) <= 4 for g in groups)
    rows = [r for g in groups for r in g.rows[:2]]
    with torch.no_grad():
        teacher = side_embeddings(model, rows, {})
        start = distill_loss(side_embeddings(model, rows, {1: WidthTarget(ratio=2.0)}), teacher, 2, 0.05, 1.0)
    config = WidthDistillConfig(
        structures=({1: WidthTarget(ratio=2.0)},),
        steps=40,
        queries_per_batch=4,
        candidates_per_query=2,
        lr=1e-2,
    )
    compensation = train_width_compensation(model, groups, config, tmp_path / "w", lambda _: None)
    assert compensation.config.ratios == (2.0,)
    with torch.no_grad():
        end = distill_loss(side_embeddings(model, rows, {1: WidthTarget(ratio=2.0)}), teacher, 2, 0.05, 1.0)
    assert float(end) < 0.5 * float(start)
    assert torch.equal(logits(model, Plan()), before_full)  # never merged: exactly the bi-encoder
    assert not torch.allclose(logits(model, MERGED), before_merged)


def test_no_query_with_enough_candidates_is_a_clear_error(
    tmp_path: Path, eval_collection: Path, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    model = split_model(tiny_tokenizer)
    groups = candidate_groups(model, [f"{eval_collection}:test"], depth=3, max_queries=None)
    config = WidthDistillConfig(structures=({1: WidthTarget(ratio=2.0)},), steps=1, candidates_per_query=8)
    with pytest.raises(ValueError, match="no query has 8 candidates"):
        train_width_compensation(model, groups, config, tmp_path / "w", lambda _: None)


@pytest.fixture
def base_artifact(
    tmp_path: Path, tiny_tokenizer: PreTrainedTokenizerFast, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """A split-pair artifact of a tiny BERT posing as the packaged MiniLM."""
    spec = BackboneSpec("minilm-l6", "none", "none", "none", "encoder")

    def fresh(*args: object, **kwargs: object) -> LoadedBackbone:  # a new copy per load, as from disk
        return LoadedBackbone(spec=spec, model=tiny_bert(), tokenizer=tiny_tokenizer, sha256="a" * 64)

    monkeypatch.setattr(artifact, "load_backbone", fresh)
    model = MatryoshkaModel.from_hf(
        "minilm-l6", tiny_bert(), tiny_tokenizer, scoring="cosine", fingerprint="a" * 64, lens_layers=[1]
    )
    save_artifact(model, tmp_path / "base")
    return tmp_path / "base"


def test_minilm_width_writes_compensation_and_plans_and_resumes(
    tmp_path: Path, eval_collection: Path, base_artifact: Path
) -> None:
    base = base_artifact
    set_fusion(base, {3: 0.5}, "somewhere:train")
    args = ["minilm-width", "--artifact", str(base), "--out", str(tmp_path / "art")]
    args += ["--data", f"{eval_collection}:test", "--depth", "4", "--candidates", "2", "--steps", "3"]
    args += ["--queries", "2", "--lr", "0.01"]
    args += ["--structures", "1:2;1:2,2:2", "--dtype", "float32", "--workdir", str(tmp_path / "w")]
    args += ["--plan", "light=1:2,2:2", "--plan", "adaptive=1:2,exit-from=2"]
    args += ["--plan", "lean=1:2,cascade-top=2,cascade-from=2"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    manifest = read_manifest(tmp_path / "art")
    assert manifest["compensation"]["ratios"] == [2.0, 4.0]
    assert manifest["calibration"]["fusion"] == {"3": 0.5}  # carried over by loading and saving
    assert manifest["calibration"]["fusion_fitted_on"] == "somewhere:train"
    assert manifest["plans"] == {
        "adaptive": {"exit_min_layer": 2, "width": {"1": 2.0}},
        "lean": {"cascade_min_layer": 2, "cascade_top_n": 2, "width": {"1": 2.0}},
        "light": {"width": {"1": 2.0, "2": 2.0}},
    }
    model = load_artifact(tmp_path / "art")
    info = model.info
    assert info.merge_ratios == (2.0, 4.0)
    assert named_plan("light", info) == Plan(width={1: WidthTarget(ratio=2.0), 2: WidthTarget(ratio=2.0)})
    adaptive = named_plan("adaptive", info, ExitConfig(irrelevant=0.1))
    assert adaptive.width == {1: WidthTarget(ratio=2.0)}
    assert adaptive.confidence is not None
    assert (adaptive.confidence.min_layer, adaptive.confidence.irrelevant) == (2, 0.1)
    assert named_plan("adaptive", info, ExitConfig(min_layer=3)).confidence.min_layer == 3  # type: ignore[union-attr]
    lean = named_plan("lean", info, ExitConfig())
    assert lean.confidence is None  # the definition has no confidence exit
    assert lean.cascade == CascadeExit(top_n=2, margin=0.0, patience=3, min_layer=2)
    assert named_plan("full", info) == Plan()  # not defined by the artifact: the generic one
    base_model = load_artifact(base)
    assert torch.equal(logits(model, Plan()), logits(base_model, Plan()))
    assert not torch.allclose(logits(model, MERGED), logits(base_model, MERGED))
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "resumed at step 3" in again.stderr


def test_bad_input_to_minilm_width_fails_with_a_message(
    tmp_path: Path, eval_collection: Path, base_artifact: Path
) -> None:
    base = base_artifact
    common = ["minilm-width", "--out", str(tmp_path / "art"), "--data", f"{eval_collection}:test"]
    for extra, message in [
        (["--artifact", str(base), "--plan", "light=1@2"], "LAYER:RATIO"),
        (["--artifact", str(tmp_path / "nowhere")], "not an artifact"),
        (["--artifact", str(base), "--structures", "1:2", "--candidates", "9"], "no query has 9"),
    ]:
        result = CliRunner().invoke(
            app, [*common, *extra, "--workdir", str(tmp_path / "w"), "--dtype", "float32"]
        )
        assert result.exit_code != 0
        assert message in result.output
    assert not (tmp_path / "art").exists()


def test_a_bad_plans_entry_in_a_manifest_is_an_artifact_error(
    base_artifact: Path,
) -> None:
    base = base_artifact
    manifest = json.loads((base / "manifest.json").read_text())
    manifest["plans"] = {"light": {"width": {"1": 2.0}, "speed": "fast"}}
    (base / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="bad `plans`"):
        load_artifact(base)


def test_teacher_embeddings_are_reused_only_for_the_same_rows_and_weights(
    tmp_path: Path, eval_collection: Path, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    source = [f"{eval_collection}:test"]
    config = WidthDistillConfig(structures=({1: WidthTarget(ratio=2.0)},), steps=1, candidates_per_query=2)
    logs: list[str] = []
    for fingerprint in ("a" * 64, "a" * 64, "b" * 64):
        model = MatryoshkaModel.from_hf(
            "minilm-l6", tiny_bert(), tiny_tokenizer, scoring="cosine", fingerprint=fingerprint
        )
        (tmp_path / "w" / "checkpoint.pt").unlink(missing_ok=True)
        groups = candidate_groups(model, source, 4, None)
        train_width_compensation(model, groups, config, tmp_path / "w", logs.append)
    stale = [line for line in logs if "recomputing" in line]
    assert len(stale) == 1  # the second run reused the first's, the third had other weights
    assert not list((tmp_path / "w").glob("*.partial"))


def test_the_budget_plan_is_one_of_the_manifest_plans(base_artifact: Path) -> None:
    manifest = json.loads((base_artifact / "manifest.json").read_text())
    manifest["plans"] = {"adaptive": {"first_stage_top_n": 50}}
    manifest["budget_plan"] = "adaptive"
    (base_artifact / "manifest.json").write_text(json.dumps(manifest))
    info = load_artifact(base_artifact).info
    assert info.budget_plan == "adaptive"
    assert info.plans["adaptive"].first_stage_top_n == 50
    manifest["budget_plan"] = "light"
    (base_artifact / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="`budget_plan` 'light' is not one of the manifest's `plans`"):
        load_artifact(base_artifact)
