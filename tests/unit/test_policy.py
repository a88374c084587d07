"""Ordering and admission: earliest effective deadline first within a step budget; refusals carry a
retry delay computed from the admitted work."""

from __future__ import annotations

import pytest

from matryoshka.engine.admission import Admission, QueueFullError, Work
from matryoshka.engine.cost import LatencyModel
from matryoshka.engine.executor import Executor
from matryoshka.engine.job import Job
from matryoshka.engine.plan import Budget, Plan
from matryoshka.engine.policy import SLOWDOWN, priority, select
from matryoshka.model.matryoshka_model import MatryoshkaModel
from tests.conftest import PASSAGES


def test_keys_are_the_earlier_of_the_deadline_and_arrival_plus_a_multiple_of_own_work(
    llama_model: MatryoshkaModel,
) -> None:
    ex = Executor(llama_model)
    info = llama_model.info
    free = ex.start(Job("the cat", PASSAGES, Plan().resolve(info), arrived=100.0))
    budgeted = ex.start(
        Job("the cat", PASSAGES, Plan(budget=Budget(max_seconds=2.0)).resolve(info), arrived=100.0)
    )
    assert priority(free, own_seconds=5.0) == 100.0 + SLOWDOWN * 5.0
    assert priority(budgeted, own_seconds=5.0) == 102.0
    assert priority(budgeted, own_seconds=0.25) == 100.0 + SLOWDOWN * 0.25


def test_a_step_takes_the_most_urgent_buckets_up_to_its_token_budget(llama_model: MatryoshkaModel) -> None:
    ex = Executor(llama_model, max_step_tokens=40)
    info = llama_model.info
    long = ex.start(Job("the cat", PASSAGES * 4, Plan().resolve(info)))
    short = ex.start(Job("the dog", PASSAGES[:1], Plan(depth=1).resolve(info)))
    long.priority, short.priority = 2.0, 1.0
    chosen = select([long, short], max_step_tokens=40)
    assert chosen[0][0] is short
    assert sum(b.padded_tokens for _, b in chosen) <= 40
    assert len(select([long], max_step_tokens=1)) == 1  # always at least one bucket
    assert {b.layer for _, b in select([long, short], None)} == {0}


def test_refusals_carry_a_retry_delay_from_the_admitted_work() -> None:
    latency = LatencyModel(seconds_per_flop=1e-9)
    admission = Admission(max_jobs=2, max_tokens=1000, latency=latency, min_retry_after=0.1)
    admission.admit(Work(tokens=600, flops=2e9))
    with pytest.raises(QueueFullError) as by_tokens:
        admission.admit(Work(tokens=600, flops=2e9))  # 200 tokens too many: a third of 600 must finish
    assert by_tokens.value.retry_after == pytest.approx(2.0 / 3)
    admission.admit(Work(tokens=300, flops=2e9))
    with pytest.raises(QueueFullError) as by_count:
        admission.admit(Work(tokens=1, flops=1.0))
    assert by_count.value.retry_after == pytest.approx(4.0 / 2)  # the first of two jobs to finish
    admission.release(Work(tokens=600, flops=2e9))
    admission.admit(Work(tokens=1, flops=1.0))
    assert (admission.num_jobs, admission.num_tokens) == (2, 301)
