"""Listwise distillation (Rank-DistiLLM): teacher-run sampling, training on tiny BERT students, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from matryoshka import cli
from matryoshka.data.datasets import Collection, DataError, Run, load_collection, read_run
from matryoshka.model import loading
from matryoshka.model.artifact import load_artifact, save_artifact
from matryoshka.model.loading import BackboneSpec, LoadedBackbone
from matryoshka.model.matryoshka_model import MatryoshkaModel
from matryoshka.model.prompt import Truncation
from matryoshka.train.groups import TrainingGroup, load_groups, save_groups
from matryoshka.train.listwise import (
    ENCODER_LORA_TARGETS,
    distill_listwise,
    lora_settings,
    spearman,
    teacher_agreement,
    teacher_groups,
)
from matryoshka.train.structures import FULL, head_logits, run_pass
from tests.conftest import tiny_bert

# Texts use the tiny tokenizer's vocabulary (tests/conftest.py WORDS).
DOCS = {
    "d0": "the cat sat",
    "d1": "paris is the capital city",
    "d2": "the sun is a hot star",
    "d3": "the dog ran",
    "d4": "blue sky",
    "d5": "green tree",
    "d6": "river water is blue",
    "d7": "france",
    "d8": "the park",
    "d9": "the mat",
}
QUERIES = {
    "q1": "where is the cat",
    "q2": "what is the capital city",
    "q3": "what is the sun",
    "q4": "who ran",
    "q5": "why is the sky blue",  # ranked by the teacher, not judged in the train split
}
TEACHER = {  # best first; q2 and q4 are too short for groups of more than 3 and 1
    "q1": ["d0", "d9", "d3", "d8", "d4", "d5", "d6", "d1", "d7", "d2"],
    "q2": ["d1", "d7", "d0"],
    "q3": ["d2", "d4", "d6", "d5", "d1", "d7", "d0", "d9", "d3", "d8"],
    "q4": ["d3"],
    "q5": ["d4", "d6", "d5", "d2", "d8", "d0", "d1", "d3", "d9", "d7"],
}
runner = CliRunner()


def _write_collection(root: Path) -> Path:
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": d, "title": "", "text": t}) + "\n" for d, t in DOCS.items())
    )
    (root / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in QUERIES.items())
    )
    qrels = ["query-id\tcorpus-id\tscore", "q1\td0\t1", "q2\td1\t1", "q3\td2\t1", "q4\td3\t1"]
    (root / "qrels" / "train.tsv").write_text("\n".join(qrels) + "\n")
    lines = [
        f"{q} Q0 {d} {rank} {0.5 * (10 - rank)} teacher"
        for q, ranking in TEACHER.items()
        for rank, d in enumerate(ranking, 1)
    ]
    (root / "teacher.trec").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def collection_dir(tmp_path: Path) -> Path:
    """A BEIR-format folder ("tiny-train") with qrels/train.tsv and a teacher run teacher.trec."""
    return _write_collection(tmp_path / "tiny-train")


@pytest.fixture
def collection(collection_dir: Path) -> Collection:
    """The loaded collection."""
    return load_collection(collection_dir)


@pytest.fixture
def run(collection_dir: Path, collection: Collection) -> Run:
    """The teacher's run."""
    return read_run(collection_dir / "teacher.trec", collection)


def _student(tokenizer) -> MatryoshkaModel:  # type: ignore[no-untyped-def]
    return MatryoshkaModel.from_hf("tiny-bert", tiny_bert(), tokenizer, fingerprint="a" * 64)


# -- sampling ------------------------------------------------------------------------------------------


def test_groups_hold_the_teachers_head_then_deep_samples(collection: Collection, run: Run) -> None:
    groups = teacher_groups(collection, "train", run, max_rank=8, hard=3, deep=2, seed=1)
    assert [g.query_id for g in groups] == ["q1", "q3"]  # q2 and q4 cannot fill 5 candidates
    for g in groups:
        ranking = TEACHER[g.query_id]
        docs = [c.doc_id for c in g.candidates]
        assert len(set(docs)) == len(docs) == 5
        assert docs[:3] == ranking[:3]  # the head of the ranking, the teacher's first as the positive
        assert [c.label for c in g.candidates] == [1, 0, 0, 0, 0]
        assert set(docs[3:]) <= set(ranking[3:8])  # deep samples: beyond `hard`, within `max_rank`
        assert [c.teacher for c in g.candidates] == [run[g.query_id][d] for d in docs]
        assert g.candidates[0].text == DOCS[ranking[0]]
        assert g.source == "tiny-train"


def test_deep_sampling_is_uniform_over_the_ranks_below_the_head(collection: Collection, run: Run) -> None:
    seen: set[str] = set()
    for seed in range(40):
        (group,) = teacher_groups(collection, ["q1"], run, max_rank=8, hard=3, deep=2, seed=seed)
        seen |= {c.doc_id for c in group.candidates[3:]}
    assert seen == set(TEACHER["q1"][3:8])  # every rank in hard+1..max_rank is drawn, none beyond


def test_sampling_is_deterministic_and_per_query(collection: Collection, run: Run) -> None:
    def draw(queries: str | list[str], seed: int) -> list[TrainingGroup]:
        return teacher_groups(collection, queries, run, max_rank=10, hard=2, deep=3, seed=seed)

    assert draw("train", 7) == draw("train", 7)
    assert draw("train", 7) != draw("train", 8)
    assert draw(["q3"], 7) == [g for g in draw("train", 7) if g.query_id == "q3"]  # others don't matter
    assert [g.query_id for g in draw(["q5", "q1"], 7)] == ["q5", "q1"]  # explicit ids, in their order


def test_short_queries_are_skipped_and_max_queries_caps_groups(collection: Collection, run: Run) -> None:
    small = teacher_groups(collection, "train", run, max_rank=10, hard=1, deep=1)
    assert [g.query_id for g in small] == ["q1", "q2", "q3"]  # q4 has a single candidate
    capped = teacher_groups(collection, "train", run, max_rank=10, hard=2, deep=2, max_queries=1)
    assert [g.query_id for g in capped] == ["q1"]


def test_groups_round_trip_through_the_groups_file(collection: Collection, run: Run, tmp_path: Path) -> None:
    groups = teacher_groups(collection, "train", run, max_rank=10, hard=2, deep=2)
    save_groups(groups, tmp_path / "groups.jsonl")
    assert load_groups(tmp_path / "groups.jsonl") == groups


def test_the_benchmark_collection_is_refused(tmp_path: Path) -> None:
    root = _write_collection(tmp_path / "trec-dl-2019")
    benchmark = load_collection(root)
    with pytest.raises(DataError, match="benchmark"):
        teacher_groups(benchmark, "train", read_run(root / "teacher.trec"), max_rank=10, hard=2, deep=2)


def test_bad_settings_and_unknown_ids_are_errors(collection: Collection, run: Run) -> None:
    with pytest.raises(ValueError, match="max_rank 4 cannot hold"):
        teacher_groups(collection, "train", run, max_rank=4, hard=3, deep=2)
    with pytest.raises(ValueError, match="hard >= 1"):
        teacher_groups(collection, "train", run, hard=0, deep=4)
    with pytest.raises(DataError, match="'q9'"):
        teacher_groups(collection, ["q9"], run, max_rank=10, hard=2, deep=2)
    with pytest.raises(DataError, match="'d99'"):
        teacher_groups(collection, ["q1"], {"q1": {"d99": 1.0, "d0": 0.5}}, max_rank=10, hard=2, deep=0)


def test_spearman() -> None:
    a = torch.tensor([0.1, 0.5, 0.9, 0.3])
    assert spearman(a, a * 10) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert spearman(torch.tensor([1.0]), torch.tensor([2.0])) == 0.0


# -- training ------------------------------------------------------------------------------------------


ORDER = ["d5", "d2", "d8", "d0", "d6", "d3", "d9", "d1", "d4", "d7"]  # a teacher a frozen student can fit


@pytest.fixture
def groups(collection: Collection) -> list[TrainingGroup]:
    """Groups of 5 (top 3 + 2 deep) for three queries whose teacher ranks different subsets by ORDER."""
    subsets = {"q1": ORDER, "q3": ORDER[2:], "q5": ORDER[::2]}
    run = {q: {d: 0.5 * (10 - ORDER.index(d)) for d in docs} for q, docs in subsets.items()}
    return teacher_groups(collection, list(subsets), run, max_rank=10, hard=3, deep=2)


def _fit(model: MatryoshkaModel, groups: list[TrainingGroup], workdir: Path, **kw):  # type: ignore[no-untyped-def]
    settings = {"epochs": 40, "groups_per_step": 1, "learning_rate": 1e-1, "progress": False}
    return distill_listwise(model, groups, workdir, **{**settings, **kw})


def _query_weight(model: MatryoshkaModel) -> torch.Tensor:
    return model.backbone.hf_model.encoder.layer[0].attention.self.query.weight  # type: ignore[no-any-return]


def test_heads_only_distillation_follows_the_teacher(tiny_tokenizer, groups, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model = _student(tiny_tokenizer)
    backbone = _query_weight(model).detach().clone()
    before = teacher_agreement(model, groups)
    summary, adapter = _fit(model, groups, tmp_path / "run")
    after = teacher_agreement(model, groups)
    assert adapter is None
    assert summary.steps == 40 * len(groups)
    first, last = summary.history[:3], summary.history[-3:]  # one epoch each
    assert sum(s.distill for s in last) < 0.5 * sum(s.distill for s in first)
    for layer in (1, 2, 3):
        assert before[layer].spearman < 0.2, before
        assert after[layer].spearman > 0.8, after
        assert after[layer].top1 == 1.0 > before[layer].top1
    assert torch.equal(_query_weight(model), backbone)  # frozen: its passes were cached once per group
    assert len(list((tmp_path / "run" / "features").glob("*.safetensors"))) == len(groups)


def test_depth_layer_trains_only_that_head(tiny_tokenizer, groups, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model = _student(tiny_tokenizer)
    heads = {k: v.detach().clone() for k, v in model.scorer.heads.state_dict().items()}  # type: ignore[union-attr]
    _fit(model, groups, tmp_path / "run", depth_layer=1)
    assert teacher_agreement(model, groups, [1])[1].spearman > 0.8
    now = model.scorer.heads.state_dict()  # type: ignore[union-attr]
    assert {k for k, v in heads.items() if not torch.equal(v, now[k])} == {"1.weight", "1.bias"}
    with pytest.raises(ValueError, match="no head at layer 7"):
        distill_listwise(model, groups, tmp_path / "other", depth_layer=7)


def test_lora_distillation_trains_the_backbone_and_reloads(tiny_tokenizer, groups, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model = _student(tiny_tokenizer)
    lora = lora_settings(model, 2)
    assert lora.targets == ENCODER_LORA_TARGETS
    query = _query_weight(model).detach().clone()
    summary, adapter = _fit(
        model, groups, tmp_path / "run", epochs=15, learning_rate=3e-2, adapter_learning_rate=3e-3, lora=lora
    )
    after = teacher_agreement(model, groups)
    assert all(after[layer].spearman > 0.8 for layer in (1, 2, 3)), after
    assert sum(s.loss for s in summary.history[-3:]) < 0.5 * sum(s.loss for s in summary.history[:3])
    assert adapter is not None
    assert adapter.config["target_modules"] == list(ENCODER_LORA_TARGETS)
    assert any(bool(v.abs().sum() > 0) for k, v in adapter.tensors.items() if "lora_B" in k)
    assert not torch.equal(_query_weight(model), query)  # merged into plain weights
    save_artifact(model, tmp_path / "artifact", lora=adapter)
    loaded = load_artifact(tmp_path / "artifact", backbone=_tiny_backbone(tiny_tokenizer))
    torch.testing.assert_close(_logits(loaded, groups[0]), _logits(model, groups[0]), rtol=1e-4, atol=1e-5)


def _logits(model: MatryoshkaModel, group: TrainingGroup) -> torch.Tensor:
    pairs = model.encode(group.query, [c.text for c in group.candidates], Truncation())
    with torch.no_grad():
        return head_logits(model, run_pass(model, pairs, [FULL], [3]).pooled[(0, 3)], 3)


def _tiny_backbone(tokenizer) -> LoadedBackbone:  # type: ignore[no-untyped-def]
    spec = BackboneSpec("tiny-bert", "none", "none", "none", "encoder")
    return LoadedBackbone(spec=spec, model=tiny_bert(), tokenizer=tokenizer, sha256="a" * 64)


# -- the CLI -------------------------------------------------------------------------------------------


def _invoke(*args: str | Path) -> tuple[int, str, str]:
    result = runner.invoke(cli.app, ["distill", *(str(a) for a in args)])
    return result.exit_code, result.stdout, result.stderr


def test_distill_command_writes_an_artifact(
    tiny_tokenizer, collection_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(loading, "load_backbone", lambda name, dtype: _tiny_backbone(tiny_tokenizer))
    out = tmp_path / "artifact"
    code, stdout, stderr = _invoke(
        "--data", f"{collection_dir}:train", "--teacher-run", collection_dir / "teacher.trec",
        "--out", out, "--workdir", tmp_path / "work", "--student", "tiny-bert", "--hard", "1", "--deep", "1",
        "--lora-rank", "2", "--epochs", "2", "--dev-fraction", "0.34", "--no-progress",
    )  # fmt: skip
    assert code == 0, stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["lora"]["target_modules"] == list(ENCODER_LORA_TARGETS)
    assert set(manifest["training"]["data"]) == {"groups.jsonl", "teacher.trec"}
    assert manifest["calibration"]["version"] == "identity"
    metrics = json.loads(stdout[: stdout.rindex("}") + 1])
    assert (metrics["train_groups"], metrics["dev_groups"]) == (2, 1)
    assert set(metrics["dev_agreement"]) == {"1", "2", "3"}
    assert len(load_groups(tmp_path / "work" / "groups.jsonl")) == 3


@pytest.mark.parametrize(
    ("run_file", "extra", "message"),
    [
        ("missing.trec", (), "missing.trec: missing TREC run file"),
        ("bad.trec", (), "line 1: score 'high' is not a number"),
        ("teacher.trec", ("--max-rank", "4"), "max_rank 4 cannot hold 8 hard plus 8 deep candidates"),
        ("teacher.trec", ("--hard", "20"), "no query of"),
    ],
)
def test_distill_command_rejects_bad_input(
    collection_dir: Path, tmp_path: Path, run_file: str, extra: tuple[str, ...], message: str
) -> None:
    (collection_dir / "bad.trec").write_text("q1 Q0 d0 1 high teacher\n")
    code, _, stderr = _invoke(
        "--data", f"{collection_dir}:train", "--teacher-run", collection_dir / run_file,
        "--out", tmp_path / "artifact", "--no-progress", *extra,
    )  # fmt: skip
    assert code == 2
    assert message in stderr, stderr
    assert not (tmp_path / "artifact").exists()
