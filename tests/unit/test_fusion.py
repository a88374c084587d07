"""Fusion with the first stage (engine/fusion.py): the math, and the engine ranking by it, above all a
budget-cut answer that falls back to the retriever's order instead of the input order."""

from __future__ import annotations

import math

import pytest
import torch

from matryoshka.engine.executor import Executor
from matryoshka.engine.exits import ExitReason
from matryoshka.engine.fusion import check_first_stage, fused_keys, fused_standing, zscores
from matryoshka.engine.job import Job, JobFailedError, JobResult
from matryoshka.engine.plan import Budget, CascadeExit, Plan
from matryoshka.engine.reranker import rank
from matryoshka.model.matryoshka_model import MatryoshkaModel
from tests.conftest import PASSAGES

QUERY = "what is the capital of france"


def test_zscores_centre_and_scale_and_leave_constants_at_zero() -> None:
    z = zscores(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    assert z.tolist() == pytest.approx([-math.sqrt(1.5), 0.0, math.sqrt(1.5)])
    assert zscores(torch.tensor([4.0, 4.0], dtype=torch.float64)).tolist() == [0.0, 0.0]


def test_fused_keys_mix_calibrated_logits_and_first_stage_by_the_layer_weight() -> None:
    probs = [0.9, 0.5, 0.1]  # the head: 0 > 1 > 2
    first = [1.0, 2.0, 3.0]  # the retriever: 2 > 1 > 0
    layers = [20, 20, 20]
    head_z = zscores(torch.logit(torch.tensor(probs, dtype=torch.float64)))
    first_z = zscores(torch.tensor(first, dtype=torch.float64))
    assert fused_keys(probs, layers, first, {20: 1.0}) == pytest.approx(head_z.tolist())
    assert fused_keys(probs, layers, first, {20: 0.0}) == pytest.approx(first_z.tolist())
    mixed = fused_keys(probs, layers, first, {20: 0.25})
    assert mixed == pytest.approx((0.25 * head_z + 0.75 * first_z).tolist())
    assert fused_keys(probs, layers, first, {}) == pytest.approx(head_z.tolist())  # unlisted: the head


def test_rows_no_head_reached_take_their_first_stage_place() -> None:
    # rows 1 and 3 were never scored (exit layer 0): weight 0, keyed by the first stage alone; the
    # head's z-scores are taken over the scored rows only
    keys = fused_keys([0.8, 0.0, 0.2, 0.0], [30, 0, 30, 0], [0.0, 9.0, 1.0, -5.0], {30: 1.0})
    first_z = zscores(torch.tensor([0.0, 9.0, 1.0, -5.0], dtype=torch.float64))
    assert keys[1] == pytest.approx(float(first_z[1]))
    assert keys[3] == pytest.approx(float(first_z[3]))
    assert keys[0] == pytest.approx(1.0)
    assert keys[2] == pytest.approx(-1.0)
    assert sorted(range(4), key=lambda i: -keys[i]) == [1, 0, 2, 3]


def test_check_first_stage() -> None:
    assert check_first_stage(None, 3) is None
    assert check_first_stage([1.0, 2.0], 2) is None
    assert check_first_stage([1.0], 2) == "1 first-stage scores for 2 documents"
    assert "not finite at documents [1]" in str(check_first_stage([1.0, math.inf], 2))


def run(model: MatryoshkaModel, plan: Plan, first_stage: list[float] | None) -> JobResult:
    (result,) = Executor(model).run([Job(QUERY, PASSAGES, plan.resolve(model.info), first_stage=first_stage)])
    assert isinstance(result, JobResult)
    return result


def test_a_budget_cut_before_any_head_ranks_by_the_first_stage(llama_model: MatryoshkaModel) -> None:
    first = [float(s) for s in (3, 7, 1, 9, 5, 2, 8, 4, 6, 0)[: len(PASSAGES)]]
    result = run(llama_model, Plan(budget=Budget(max_seconds=1e-9)), first)
    assert result.partial
    assert all(o.exit_layer == 0 and o.exit_reason is ExitReason.BUDGET for o in result.outcomes)
    expected = sorted(range(len(PASSAGES)), key=lambda i: -first[i])
    assert [o.index for o in rank(result.outcomes)] == expected
    # without first-stage scores the same cut keeps the input order
    plain = run(llama_model, Plan(budget=Budget(max_seconds=1e-9)), None)
    assert [o.index for o in rank(plain.outcomes)] == list(range(len(PASSAGES)))


def test_weights_from_the_model_decide_the_engine_ranking(llama_model: MatryoshkaModel) -> None:
    first = [float(len(PASSAGES) - i) for i in range(len(PASSAGES))]  # the retriever: input order
    heads_only = [o.index for o in rank(run(llama_model, Plan(), None).outcomes)]
    llama_model.fusion = {llama_model.backbone.num_layers: 0.0}
    try:
        retriever = [o.index for o in rank(run(llama_model, Plan(), first).outcomes)]
        llama_model.fusion = {llama_model.backbone.num_layers: 1.0}
        trusted = [o.index for o in rank(run(llama_model, Plan(), first).outcomes)]
    finally:
        llama_model.fusion = {}
    assert retriever == list(range(len(PASSAGES)))
    assert trusted == heads_only


def test_first_stage_scores_that_do_not_fit_fail_the_job(llama_model: MatryoshkaModel) -> None:
    (result,) = Executor(llama_model).run(
        [Job(QUERY, PASSAGES, Plan().resolve(llama_model.info), first_stage=[1.0])]
    )
    assert isinstance(result, JobFailedError)
    assert "first-stage scores" in str(result)


def test_standing_at_lift_zero_is_the_ranking_key_and_a_lift_raises_only_scored_rows() -> None:
    probs = torch.tensor([0.8, math.nan, 0.2, 0.5], dtype=torch.float64)
    layers = torch.tensor([3, 0, 3, 2])
    first = [0.0, 9.0, 1.0, -5.0]
    weights = {3: 0.5, 2: 0.25}
    standing = fused_standing(probs, layers, first, weights)
    assert standing(0.0).tolist() == pytest.approx(
        fused_keys(probs.tolist(), layers.tolist(), first, weights)
    )
    raised = standing(0.1) - standing(0.0)
    assert raised[1] == 0.0  # no head reached it: its key is the first stage's
    assert bool((raised[[0, 2, 3]] > 0).all())
    # the z-scoring stays that of the probabilities as they are: the lifted key is the logit moved alone
    c = torch.logit(probs[[0, 2, 3]])
    expected = 0.5 * (
        (torch.logit(torch.tensor(0.3, dtype=torch.float64)) - c.mean()) / c.std(unbiased=False)
    )
    assert float(
        standing(0.1)[2] - 0.5 * zscores(torch.tensor(first, dtype=torch.float64))[2]
    ) == pytest.approx(float(expected))


def test_with_first_stage_scores_the_cascade_keeps_what_the_fused_ranking_puts_on_top(
    llama_model: MatryoshkaModel,
) -> None:
    """A top-2 cascade at the first head layer: by probability it keeps the head's top 2; fused with
    a retriever that trusts other documents (weight 0.1 at every head) it keeps the fused top 2."""
    layer = llama_model.info.head_layers[0]
    plan = Plan(cascade=CascadeExit(top_n=2, margin=0.0, patience=99, min_layer=layer))
    depth_one = run(llama_model, Plan(depth=layer), None)
    by_head = sorted(range(len(PASSAGES)), key=lambda i: -depth_one.outcomes[i].probability)
    first = [0.0] * len(PASSAGES)
    favoured = by_head[-2:]  # the head's two worst
    for i in favoured:
        first[i] = 100.0
    plain = run(llama_model, plan, None)
    assert {o.index for o in plain.outcomes if o.exit_layer > layer} == set(by_head[:2])
    llama_model.fusion = dict.fromkeys(llama_model.info.head_layers, 0.1)
    try:
        fused = run(llama_model, plan, first)
    finally:
        llama_model.fusion = {}
    assert {o.index for o in fused.outcomes if o.exit_layer > layer} == set(favoured)
    assert all(o.exit_reason is ExitReason.CASCADE for o in fused.outcomes if o.index not in favoured)
