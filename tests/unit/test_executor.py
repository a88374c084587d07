"""The executor: exits really shrink the batch, states resume exactly, usage adds up, jobs stay apart."""

from __future__ import annotations

import math

import pytest
import torch

from matryoshka.cache.codec import CodecError, decode_row, encode_row
from matryoshka.engine.executor import Executor
from matryoshka.engine.exits import ExitReason
from matryoshka.engine.job import Job, JobResult, RequestCancelledError
from matryoshka.engine.plan import Budget, CascadeExit, ConfidenceExit, Plan
from matryoshka.engine.reranker import Reranker, rank
from matryoshka.model.matryoshka_model import MatryoshkaModel
from matryoshka.model.prompt import Truncation
from matryoshka.model.width import WidthTarget
from tests.conftest import PASSAGES, tiny_llama

QUERY = "what is the capital of france"


def run_one(model: MatryoshkaModel, plan: Plan, **job_kwargs) -> JobResult:
    (result,) = Executor(model).run([Job(QUERY, PASSAGES, plan.resolve(model.info), **job_kwargs)])
    assert isinstance(result, JobResult)
    return result


def by_index(result: JobResult) -> dict[int, tuple[float, int]]:
    return {o.index: (o.logit, o.exit_layer) for o in result.outcomes}


@pytest.mark.parametrize("fixture", ["llama_model", "bert_model"])
def test_full_depth_scores_equal_a_plain_forward(fixture: str, request: pytest.FixtureRequest) -> None:
    model: MatryoshkaModel = request.getfixturevalue(fixture)
    result = run_one(model, Plan())
    state = model.embed(model.encode(QUERY, PASSAGES, Truncation()))
    for layer in range(1, model.backbone.num_layers + 1):
        state = model.backbone.forward_layer(layer, state)
    expected = model.scorer.logits(state)
    got = torch.tensor([o.logit for o in result.outcomes], dtype=torch.float32)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert all(o.exit_layer == model.backbone.num_layers for o in result.outcomes)
    assert all(o.exit_reason is ExitReason.DEPTH for o in result.outcomes)


def test_sorting_by_length_keeps_results_with_their_documents(llama_model: MatryoshkaModel) -> None:
    """Each document alone and in a mixed-length batch gets the same score."""
    together = by_index(run_one(llama_model, Plan()))
    ex = Executor(llama_model)
    for i, passage in enumerate(PASSAGES):
        (alone,) = ex.run([Job(QUERY, [passage], Plan().resolve(llama_model.info))])
        assert isinstance(alone, JobResult)
        assert alone.outcomes[0].logit == pytest.approx(together[i][0], abs=1e-5)


def test_exited_rows_leave_the_batch(llama_model: MatryoshkaModel) -> None:
    """A confident exit at layer 1 means later layers process fewer layer-tokens."""
    full = run_one(llama_model, Plan())
    probs = sorted(o.probability for o in full.outcomes)
    # Everything below the median is "confidently irrelevant" at the first layer it is scored.
    first = run_one(llama_model, Plan(confidence=ConfidenceExit(relevant=None, irrelevant=1.0, min_layer=1)))
    assert all(o.exit_layer == 1 and o.exit_reason is ExitReason.CONFIDENT_IRRELEVANT for o in first.outcomes)
    assert first.usage.layer_tokens * llama_model.backbone.num_layers == full.usage.layer_tokens
    assert first.usage.flops < full.usage.flops / 3
    assert probs  # the full run scored every document
    mixed = run_one(llama_model, Plan(cascade=CascadeExit(top_n=2, margin=0.0, patience=99)))
    assert 0 < mixed.usage.layer_tokens < full.usage.layer_tokens
    assert any(o.exit_reason is ExitReason.CASCADE for o in mixed.outcomes)


def test_depth_and_width_cut_flops(llama_model: MatryoshkaModel) -> None:
    full = run_one(llama_model, Plan())
    shallow = run_one(llama_model, Plan(depth=2))
    narrow = run_one(llama_model, Plan(width={1: WidthTarget(ratio=2.0)}))
    assert shallow.usage.flops_saved == pytest.approx(0.5, abs=0.02)
    assert 0 < narrow.usage.flops_saved < shallow.usage.flops_saved
    assert full.usage.flops_saved == pytest.approx(0.0, abs=1e-9)
    assert narrow.usage.layer_tokens < full.usage.layer_tokens
    assert all(o.exit_layer == 2 for o in shallow.outcomes)


@pytest.mark.parametrize("fixture", ["llama_model", "bert_model"])
@pytest.mark.parametrize("split_at", [1, 2, 3])
def test_state_resumes_exactly_after_serialisation(
    fixture: str, split_at: int, request: pytest.FixtureRequest
) -> None:
    """Stop at layer k, serialise each row, resume at k+1: the same scores as one uninterrupted run."""
    model: MatryoshkaModel = request.getfixturevalue(fixture)
    depth = model.backbone.num_layers
    # A state at layer k carries the merges scheduled before k; merging after k happens on resume.
    width = {1 if split_at >= 2 else 2: WidthTarget(ratio=2.0)}
    straight = run_one(model, Plan(depth=depth, width=width))
    prefix = {k: v for k, v in width.items() if k < split_at}
    partial = run_one(model, Plan(depth=split_at, width=prefix), keep_states=True)
    assert sorted(partial.states) == list(range(len(PASSAGES)))
    blobs = {i: encode_row(s) for i, s in partial.states.items()}
    resumed_states = {i: decode_row(b) for i, b in blobs.items()}
    assert all(s.layer == split_at for s in resumed_states.values())
    resumed = run_one(model, Plan(depth=depth, width=width), resume=resumed_states)
    for (a_logit, a_layer), (b_logit, b_layer) in zip(
        by_index(straight).values(), by_index(resumed).values(), strict=True
    ):
        assert a_layer == b_layer == depth
        assert a_logit == pytest.approx(b_logit, abs=1e-5)
    assert resumed.usage.flops < straight.usage.flops


def test_resumed_and_fresh_rows_mix_in_one_job(llama_model: MatryoshkaModel) -> None:
    straight = by_index(run_one(llama_model, Plan()))
    partial = run_one(llama_model, Plan(depth=2), keep_states=True)
    half = {i: s for i, s in partial.states.items() if i % 2 == 0}
    mixed = by_index(run_one(llama_model, Plan(), resume=half))
    for i in range(len(PASSAGES)):
        assert mixed[i][0] == pytest.approx(straight[i][0], abs=1e-5)


def test_codec_rejects_corruption(llama_model: MatryoshkaModel) -> None:
    state = run_one(llama_model, Plan(depth=1), keep_states=True).states[0]
    blob = encode_row(state)
    with pytest.raises(CodecError, match="checksum"):
        decode_row(blob[:-1] + bytes([blob[-1] ^ 1]))
    with pytest.raises(CodecError, match="magic"):
        decode_row(b"PICKLE" + blob)
    with pytest.raises(CodecError, match="version"):
        decode_row(blob[:4] + bytes([99]) + blob[5:])
    back = decode_row(blob)
    assert torch.equal(back.hidden, state.hidden)
    assert back.layer == state.layer


def test_jobs_batched_together_answer_as_if_alone(llama_model: MatryoshkaModel) -> None:
    info = llama_model.info
    jobs = [
        Job(QUERY, PASSAGES, Plan().resolve(info)),
        Job("where is the sun", PASSAGES[:3], Plan(depth=2).resolve(info)),
        Job("blue sky", PASSAGES[1:], Plan(width={2: WidthTarget(length=8)}).resolve(info)),
    ]
    together = Executor(llama_model).run(jobs)
    for job, joint in zip(jobs, together, strict=True):
        (alone,) = Executor(llama_model).run([job])
        assert isinstance(joint, JobResult)
        assert isinstance(alone, JobResult)
        for a, b in zip(joint.outcomes, alone.outcomes, strict=True):
            assert (a.index, a.exit_layer) == (b.index, b.exit_layer)
            assert a.logit == pytest.approx(b.logit, abs=1e-5)
        assert joint.usage.flops == pytest.approx(alone.usage.flops)


def test_budget_in_flops_returns_partial_results(llama_model: MatryoshkaModel) -> None:
    full = run_one(llama_model, Plan())
    tight = run_one(llama_model, Plan(budget=Budget(max_flops=full.usage.full_flops / 3)))
    assert tight.partial
    assert all(o.exit_reason is ExitReason.BUDGET for o in tight.outcomes)
    assert tight.usage.flops <= full.usage.full_flops / 3
    assert all(o.exit_layer < llama_model.backbone.num_layers for o in tight.outcomes)


def test_a_budget_too_small_for_any_head_answers_in_input_order(llama_model: MatryoshkaModel) -> None:
    plan = Plan(budget=Budget(max_seconds=1e-9)).resolve(llama_model.info)
    (result,) = Executor(llama_model).run([Job(QUERY, PASSAGES, plan)])
    assert isinstance(result, JobResult)
    assert result.partial
    assert [(o.index, o.exit_layer, o.exit_reason) for o in result.outcomes] == [
        (i, 0, ExitReason.BUDGET) for i in range(len(PASSAGES))
    ]
    assert [o.index for o in rank(result.outcomes)] == list(range(len(PASSAGES)))
    assert result.usage.flops == 0


def test_cancellation_stops_at_a_layer_boundary(llama_model: MatryoshkaModel) -> None:
    calls = []

    def cancelled() -> bool:
        calls.append(1)
        return len(calls) >= 2  # cancel before the second layer

    plan = Plan().resolve(llama_model.info)
    other = Job("blue sky", PASSAGES, plan)
    result, survivor = Executor(llama_model).run([Job(QUERY, PASSAGES, plan, cancelled=cancelled), other])
    assert isinstance(result, RequestCancelledError)
    assert len(calls) == 2
    assert isinstance(survivor, JobResult)
    assert len(survivor.outcomes) == len(PASSAGES)


def test_bf16_ranks_like_fp32(tiny_tokenizer) -> None:
    fp32 = Reranker(MatryoshkaModel.from_hf("t", tiny_llama(), tiny_tokenizer))
    bf16 = Reranker(MatryoshkaModel.from_hf("t", tiny_llama().to(torch.bfloat16), tiny_tokenizer))
    a = fp32.rerank(QUERY, PASSAGES, score_type="logit")
    b = bf16.rerank(QUERY, PASSAGES, score_type="logit")
    assert bf16.model.backbone.dtype == torch.bfloat16
    got = {d.index: d.score for d in b.results}
    for d in a.results:
        assert got[d.index] == pytest.approx(d.score, abs=0.05)


def test_reranker_sorts_truncates_and_returns_documents(llama_model: MatryoshkaModel) -> None:
    reranker = Reranker(llama_model)
    result = reranker.rerank(QUERY, PASSAGES, top_n=3, return_documents=True)
    assert len(result.results) == 3
    scores = [d.score for d in result.results]
    assert scores == sorted(scores, reverse=True)
    assert all(d.document == PASSAGES[d.index] for d in result.results)
    assert result.usage.flops > 0
    assert result.timing.total_seconds >= result.timing.compute_seconds > 0
    with pytest.raises(ValueError, match="query"):
        reranker.rerank("  ", PASSAGES)
    assert reranker.rerank(QUERY, []).results == []


def test_adaptive_plans_score_only_where_an_exit_is_allowed(llama_model: MatryoshkaModel) -> None:
    """Below the first allowed exit layer nothing can act on a score, so none is computed."""
    stages: list[int] = []
    plan = Plan(confidence=ConfidenceExit(relevant=None, irrelevant=0.0, min_layer=3)).resolve(
        llama_model.info
    )
    Executor(llama_model).run([Job(QUERY, PASSAGES, plan)], on_stage=lambda j, layer, o: stages.append(layer))
    assert stages == [3, 4]
    budgeted = Plan(budget=Budget(max_flops=1e18)).resolve(llama_model.info)
    stages.clear()
    Executor(llama_model).run(
        [Job(QUERY, PASSAGES, budgeted)], on_stage=lambda j, layer, o: stages.append(layer)
    )
    assert stages == [1, 2, 3, 4]  # a budget may cut anywhere, so every head layer is scored


def test_a_budget_stop_with_resumed_rows_still_waiting(llama_model: MatryoshkaModel) -> None:
    """Rows resumed at layer 2 have not joined when a tiny budget stops the job: input order, no crash."""
    states = run_one(llama_model, Plan(depth=2), keep_states=True).states
    plan = Plan(budget=Budget(max_seconds=1e-9)).resolve(llama_model.info)
    job = Job(QUERY, PASSAGES, plan, resume={0: states[0]}, keep_states=True)
    (result,) = Executor(llama_model).run([job])
    assert isinstance(result, JobResult)
    assert result.partial
    assert {o.exit_layer for o in result.outcomes} == {0}
    assert 0 not in result.states  # a waiting resumed row has no new state to hand back


def test_logits_are_the_calibrated_log_odds_in_probability_order(llama_model: MatryoshkaModel) -> None:
    """With a per-layer calibration and candidates exiting at different layers, a result's logit is
    the log-odds of its probability (the proto's SCORE_TYPE_LOGIT), so both score types rank alike."""
    calibration = [(0.5, 3.0), (2.0, -1.0), (1.5, 0.5), (4.0, 0.0)]
    for layer, (temperature, bias) in zip(llama_model.info.head_layers, calibration, strict=True):
        llama_model.scorer.calibration.set(layer, temperature, bias)
    probs = sorted(o.probability for o in run_one(llama_model, Plan(depth=1)).outcomes)
    threshold = probs[len(probs) // 2]  # about half exit at layer 1, the rest run to the depth
    plan = Plan(confidence=ConfidenceExit(relevant=1.0, irrelevant=threshold, min_layer=1))
    result = run_one(llama_model, plan)
    assert len({o.exit_layer for o in result.outcomes}) > 1
    for o in result.outcomes:
        assert o.logit == pytest.approx(math.log(o.probability / (1 - o.probability)), abs=1e-6)
    by_probability = [o.index for o in rank(result.outcomes)]
    by_logit = [o.index for o in sorted(result.outcomes, key=lambda o: (-o.logit, o.index))]
    assert by_probability == by_logit
    state = llama_model.backbone.forward_layer(
        1, llama_model.embed(llama_model.encode(QUERY, PASSAGES, Truncation()))
    )
    raw_first = llama_model.scorer.logits(state)
    early = [o for o in result.outcomes if o.exit_layer == 1]
    assert early
    for o in early:  # layer 1's calibration: raw / 0.5 + 3
        assert o.logit == pytest.approx(float(raw_first[o.index]) / 0.5 + 3.0, abs=1e-4)
