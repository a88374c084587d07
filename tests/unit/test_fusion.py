"""Fusion with the first stage (engine/fusion.py): the math, and the engine ranking by it, above all a
budget-cut answer that falls back to the retriever's order instead of the input order."""

from __future__ import annotations

import math

import pytest
import torch

from matryoshka.engine.executor import Executor
from matryoshka.engine.exits import ExitReason
from matryoshka.engine.fusion import check_first_stage, fused_keys, zscores
from matryoshka.engine.job import Job, JobFailedError, JobResult
from matryoshka.engine.plan import Budget, Plan
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
