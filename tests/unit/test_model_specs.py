"""Several models by name: `models` entries parsed, the default chosen, bad entries refused up front."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from matryoshka.server.model_specs import ModelSpec, ModelSpecError, parse_spec, served_specs
from matryoshka.server.settings import Settings


@pytest.mark.parametrize(
    ("entry", "spec"),
    [
        ("fast=minilm-l6", ModelSpec("fast", "minilm-l6", "backbone")),
        (
            "lens=smollm2-135m,scoring=heads,artifact=/a/b",
            ModelSpec("lens", "smollm2-135m", "backbone", "heads", "/a/b"),
        ),
        ("bge=/models/bge-gemma", ModelSpec("bge", "/models/bge-gemma", "directory")),
        ("local=./minilm-l6", ModelSpec("local", "./minilm-l6", "directory")),
        ("home=~/ckpt", ModelSpec("home", "~/ckpt", "directory")),
    ],
)
def test_an_entry_names_a_backbone_or_a_directory(entry: str, spec: ModelSpec) -> None:
    assert parse_spec(entry) == spec
    assert parse_spec(spec.describe()) == spec  # what error messages show parses back to the same


@pytest.mark.parametrize(
    ("entry", "said"),
    [
        ("minilm-l6", "write NAME=SOURCE"),
        ("fast=", "write NAME=SOURCE"),
        ("=minilm-l6", "name ''"),
        ("a b=minilm-l6", "name 'a b'"),
        ("fast=minilm-l6,depth=3", "unknown option 'depth=3'"),
        ("fast=minilm-l6,scoring=bm25", "scoring must be one of heads, query_likelihood, cosine"),
        ("fast=minilm-l6,scoring=heads,scoring=cosine", "scoring given twice"),
        ("bge=/models/bge,scoring=heads", "packaged backbones only"),
    ],
)
def test_a_bad_entry_says_what_is_wrong(entry: str, said: str) -> None:
    with pytest.raises(ModelSpecError, match="models entry") as caught:
        parse_spec(entry)
    assert said in str(caught.value)


def test_the_single_model_settings_stay_the_default_model() -> None:
    specs = served_specs(Settings(model="minilm-l6", models=["dir=/models/x", "small=smollm2-135m"]))
    assert [(s.name, s.kind) for s in specs] == [
        ("minilm-l6", "backbone"),
        ("dir", "directory"),
        ("small", "backbone"),
    ]
    assert [s.name for s in served_specs(Settings())] == ["smollm2-135m"]
    named_dir = served_specs(Settings(model_dir="/models/bge/", models=["b=minilm-l6"]))
    assert [(s.name, s.source) for s in named_dir] == [("bge", "/models/bge/"), ("b", "minilm-l6")]


def test_without_single_model_settings_the_first_entry_is_the_default() -> None:
    specs = served_specs(Settings(models=["a=/m/a", "b=minilm-l6"]))
    assert [s.name for s in specs] == ["a", "b"]


def test_the_environment_takes_a_json_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MATRYOSHKA_MODELS", '["a=/m/a", "b=minilm-l6,scoring=heads"]')
    assert [s.describe() for s in served_specs(Settings())] == ["a=/m/a", "b=minilm-l6,scoring=heads"]


@pytest.mark.parametrize(
    ("settings", "said"),
    [
        ({"models": ["a=/m/a", "a=minilm-l6"]}, "model name 'a' is served twice (a=/m/a and a=minilm-l6)"),
        ({"model": "minilm-l6", "models": ["minilm-l6=/m/x"]}, "model name 'minilm-l6' is served twice"),
        ({"models": ["a=minilm-l6,width=2"]}, "unknown option 'width=2'"),
    ],
)
def test_bad_models_settings_are_refused_before_anything_loads(
    settings: dict[str, object], said: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings.model_validate(settings)
    assert said in str(caught.value)


def test_the_environment_must_give_a_json_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MATRYOSHKA_MODELS", "a=minilm-l6")
    with pytest.raises(ValidationError, match="MATRYOSHKA_MODELS must be a JSON list of NAME=SOURCE"):
        Settings()
