"""The layer-state cache inside the step-based engine: resumed rows join a job at their layer while
other jobs run, cached scores below a resume layer still decide, and a budget stop answers rows that
wait with cached scores from those scores."""

from __future__ import annotations

import statistics

import pytest
import torch

from matryoshka.cache.layer_cache import LayerCache, key_space
from matryoshka.cache.memory import MemoryStore
from matryoshka.engine.exits import ExitReason
from matryoshka.engine.job import Job, JobResult
from matryoshka.engine.plan import Budget, ConfidenceExit, Plan
from matryoshka.engine.reranker import Reranker
from matryoshka.model.matryoshka_model import MatryoshkaModel
from matryoshka.model.prompt import Truncation
from tests.conftest import PASSAGES

QUERY = "what is the capital of france"
OTHER = "who ran to the tree"


@pytest.fixture
def cached(llama_model: MatryoshkaModel) -> Reranker:
    return Reranker(llama_model, cache=LayerCache(MemoryStore(), key_space(llama_model)))


def cached_job(reranker: Reranker, plan: Plan, query: str = QUERY) -> Job:
    """A job as the servicer builds it: tokenised, looked up, asking for its states back."""
    assert isinstance(reranker.cache, LayerCache)
    resolved = plan.resolve(reranker.info)
    pairs = reranker.model.encode(query, PASSAGES, Truncation())
    found = reranker.cache.lookup(pairs, resolved)
    return Job(
        query,
        PASSAGES,
        resolved,
        pairs=pairs,
        resume=found.states,
        cached_scores=found.scores,
        keep_states=True,
    )


def test_resumed_rows_join_a_job_that_starts_while_another_runs(cached: Reranker) -> None:
    fresh = cached.rerank(QUERY, PASSAGES, Plan(depth=4), use_cache=False)
    shallow = cached.rerank(QUERY, PASSAGES, Plan(depth=2))
    executor = cached.executor
    executor.max_step_tokens = 64  # a few rows a step: the long job needs many steps
    with torch.inference_mode():  # as on the scheduler's engine thread
        long = executor.start(Job(OTHER, PASSAGES * 4, Plan(depth=4).resolve(cached.info)))
        executor.step([long])
        resumed = executor.start(cached_job(cached, Plan(depth=4)))
        assert resumed.layer == 2
        assert not resumed.done
        runs = [long, resumed]
        while not resumed.done:
            assert executor.step(runs)
        assert not long.done  # it answered beside the long job, not after it
        while not long.done:
            assert executor.step(runs)
    answer = resumed.result()
    assert isinstance(answer, JobResult)
    assert isinstance(long.result(), JobResult)
    scores = {o.index: o.probability for o in answer.outcomes}
    assert scores == pytest.approx({d.index: d.score for d in fresh.results}, abs=1e-5)
    assert answer.usage.cache_resumed == len(PASSAGES)
    assert answer.usage.cache_hits == 0
    assert answer.usage.cached_flops == pytest.approx(shallow.usage.flops)
    assert answer.usage.flops < fresh.usage.flops
    assert set(answer.states) == set(range(len(PASSAGES)))  # handed back for the write-back
    assert all(set(s) == {4} for s in answer.scores.values())  # scored only at its depth


def test_cached_scores_below_the_resume_layer_still_decide(cached: Reranker) -> None:
    """All rows resume at layer 2 with scores cached at 1 and 2: the confidence exit must still see
    layer 1, as in a fresh run, though no row of the job ever runs there."""
    first = cached.rerank(QUERY, PASSAGES, Plan(depth=1), use_cache=False)
    threshold = statistics.median(d.score for d in first.results)
    never = Plan(depth=2, confidence=ConfidenceExit(relevant=None, irrelevant=0.0, min_layer=1))
    cached.rerank(QUERY, PASSAGES, never)  # caches scores at 1 and 2, states at 2
    plan = Plan(depth=4, confidence=ConfidenceExit(relevant=None, irrelevant=threshold, min_layer=1))
    fresh = cached.rerank(QUERY, PASSAGES, plan, use_cache=False)
    warm = cached.rerank(QUERY, PASSAGES, plan)
    layers = {d.index: d.exit_layer for d in fresh.results}
    assert 1 in layers.values()
    assert {d.index: d.exit_layer for d in warm.results} == layers
    assert {d.index: d.score for d in warm.results} == pytest.approx(
        {d.index: d.score for d in fresh.results}, abs=1e-5
    )
    hits = {d.index for d in warm.results if d.exit_reason is ExitReason.CACHE_HIT}
    assert hits == {i for i, layer in layers.items() if layer <= 2}  # cached up to layer 2
    assert warm.usage.cache_hits == len(hits)


def test_a_budget_stop_answers_cached_rows_from_their_cached_scores(cached: Reranker) -> None:
    cold = cached.rerank(QUERY, PASSAGES[:2], Plan(depth=3))
    job = cached_job(cached, Plan(depth=3, budget=Budget(max_flops=1.0)))  # no layer fits
    (answer,) = cached.executor.run([job])
    assert isinstance(answer, JobResult)
    assert answer.partial
    by_index = {o.index: o for o in answer.outcomes}
    for d in cold.results:  # the two cached pairs: complete answers, no compute
        o = by_index[d.index]
        assert (o.exit_reason, o.exit_layer) == (ExitReason.CACHE_HIT, 3)
        assert o.probability == pytest.approx(d.score, abs=1e-6)
    rest = [by_index[i] for i in range(2, len(PASSAGES))]
    assert {(o.exit_reason, o.exit_layer) for o in rest} == {(ExitReason.BUDGET, 0)}
    assert answer.usage.cache_hits == 2
