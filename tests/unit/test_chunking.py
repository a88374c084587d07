"""Chunked jobs: a document's score aggregates its windows' scores, exits act on documents, min_score
drops what it should, and windows go through the cache like any row."""

from __future__ import annotations

import math

import pytest
import torch

from matryoshka.cache.layer_cache import LayerCache, key_space
from matryoshka.cache.memory import MemoryStore
from matryoshka.engine.aggregate import Grouping, calibrated_logits
from matryoshka.engine.executor import Executor
from matryoshka.engine.exits import ExitReason, ExitSchedule
from matryoshka.engine.job import Job, JobResult, Outcome
from matryoshka.engine.plan import CascadeExit, ConfidenceExit, Plan
from matryoshka.engine.reranker import Reranker, rank
from matryoshka.model.matryoshka_model import MatryoshkaModel
from matryoshka.model.prompt import Truncation
from matryoshka.model.window import Chunking, Window

QUERY = "what is the capital of france"
LONG = [
    "the cat sat on the mat the dog ran to the park the sun is a hot star paris is the capital of france",
    "blue sky and green tree the river water is blue which city is the capital the cat sat on the mat",
    "water is blue",
]


def run_chunked(model: MatryoshkaModel, plan: Plan, chunking: Chunking) -> tuple[Job, JobResult]:
    job = Job(QUERY, LONG, plan.resolve(model.info), chunking=chunking)
    (result,) = Executor(model).run([job])
    assert isinstance(result, JobResult)
    return job, result


@pytest.mark.parametrize("aggregate", ["max", "mean"])
def test_a_document_scores_as_the_aggregate_of_its_windows_scored_alone(
    llama_model: MatryoshkaModel, aggregate: str
) -> None:
    chunking = Chunking(6, 2, aggregate)  # type: ignore[arg-type]
    job, chunked = run_chunked(llama_model, Plan(), chunking)
    assert job.windows is not None
    windows = list(job.windows)
    texts = [LONG[w.document][w.start : w.end] for w in windows]
    (alone,) = Executor(llama_model).run(
        [Job(QUERY, texts, Plan().resolve(llama_model.info), Truncation(max_passage_tokens=10_000))]
    )
    assert isinstance(alone, JobResult)
    assert chunked.usage.rows == len(windows) > len(LONG)
    assert [o.index for o in chunked.outcomes] == [0, 1, 2]
    for o in chunked.outcomes:
        mine = [(alone.outcomes[r].probability, r) for r, w in enumerate(windows) if w.document == o.index]
        best_p, best_row = max(mine, key=lambda pr: (pr[0], -pr[1]))
        assert o.window == windows[best_row]
        if aggregate == "max":
            assert o.probability == pytest.approx(best_p, abs=1e-6)
        else:
            mean = calibrated_logits(torch.tensor([p for p, _ in mine], dtype=torch.float64)).mean()
            assert o.probability == pytest.approx(float(torch.sigmoid(mean)), abs=1e-6)
        assert o.exit_reason is ExitReason.DEPTH
        assert o.tokens == sum(alone.outcomes[r].tokens for _, r in mine)


def test_first_runs_only_the_first_window(llama_model: MatryoshkaModel) -> None:
    job, result = run_chunked(llama_model, Plan(), Chunking(6, 2, "first"))
    assert job.windows is not None
    assert result.usage.rows == len(LONG)
    for o in result.outcomes:
        assert o.window is not None
        assert o.window.index == 0
    assert result.outcomes[0].window is not None
    assert result.outcomes[0].window.count > 1


def window(document: int, index: int, count: int) -> Window:
    return Window(document, index, count, index * 10, index * 10 + 10)


def test_a_relevant_window_stops_its_siblings_an_irrelevant_one_stops_alone() -> None:
    """Document 0: window 0 relevant -> both windows stop CONFIDENT_RELEVANT. Document 1: window 0
    irrelevant stops alone, window 1 runs on; document 1 stops whole once both are irrelevant."""
    g = Grouping([window(0, 0, 2), window(0, 1, 2), window(1, 0, 2), window(1, 1, 2)], 2, "max")
    plan = Plan(depth=4, confidence=ConfidenceExit(relevant=0.9, irrelevant=0.1))
    schedule = ExitSchedule(plan)
    probs = torch.tensor([0.95, 0.5, 0.05, 0.5], dtype=torch.float64)
    active = torch.ones(4, dtype=torch.bool)
    decided = g.decide(schedule, 1, probs, active)
    assert decided == {
        0: ExitReason.CONFIDENT_RELEVANT,
        1: ExitReason.CONFIDENT_RELEVANT,
        2: ExitReason.CONFIDENT_IRRELEVANT,
    }


def test_under_mean_windows_stop_only_with_their_document() -> None:
    g = Grouping([window(0, 0, 2), window(0, 1, 2)], 1, "mean")
    schedule = ExitSchedule(Plan(depth=4, confidence=ConfidenceExit(relevant=0.99, irrelevant=0.1)))
    assert (
        g.decide(schedule, 1, torch.tensor([0.05, 0.6], dtype=torch.float64), torch.ones(2, dtype=torch.bool))
        == {}
    )
    low = torch.tensor([0.05, 0.02], dtype=torch.float64)
    assert g.decide(schedule, 1, low, torch.ones(2, dtype=torch.bool)) == {
        0: ExitReason.CONFIDENT_IRRELEVANT,
        1: ExitReason.CONFIDENT_IRRELEVANT,
    }


def test_the_cascade_compares_documents_and_drops_windows_that_cannot_lift_theirs() -> None:
    """top-1: document 0 (best window 0.8) leads; document 1's best window 0.75 is within the margin
    and runs, its 0.2 window cannot lift it (0.2 + 0.1 < 0.8) and stops; document 2 drops whole."""
    rows = [window(0, 0, 2), window(0, 1, 2), window(1, 0, 2), window(1, 1, 2), window(2, 0, 1)]
    g = Grouping(rows, 3, "max")
    cascade = CascadeExit(top_n=1, margin=0.1, patience=10)
    schedule = ExitSchedule(Plan(depth=4, cascade=cascade))
    probs = torch.tensor([0.8, 0.3, 0.75, 0.2, 0.5], dtype=torch.float64)
    decided = g.decide(schedule, 1, probs, torch.ones(5, dtype=torch.bool))
    assert decided == {1: ExitReason.CASCADE, 3: ExitReason.CASCADE, 4: ExitReason.CASCADE}


def test_ranked_with_the_first_stage_only_whole_documents_drop() -> None:
    """The same documents ranked by a standing (fusion): document 2 drops whole, but no window stops
    alone, since its key depends on the other documents' scores, not on its own probability only."""
    rows = [window(0, 0, 2), window(0, 1, 2), window(1, 0, 2), window(1, 1, 2), window(2, 0, 1)]
    g = Grouping(rows, 3, "max")
    schedule = ExitSchedule(Plan(depth=4, cascade=CascadeExit(top_n=1, margin=0.1, patience=10)))
    probs = torch.tensor([0.8, 0.3, 0.75, 0.2, 0.5], dtype=torch.float64)
    decided = g.decide(
        schedule, 1, probs, torch.ones(5, dtype=torch.bool), lambda docs: lambda lift: docs + lift
    )
    assert decided == {4: ExitReason.CASCADE}


def test_document_outcomes_run_until_every_window_is_done() -> None:
    g = Grouping([window(0, 0, 2), window(0, 1, 2)], 1, "max")
    rows = [
        Outcome(0, 2.0, 0.9, 2, ExitReason.CONFIDENT_RELEVANT, 10),
        Outcome(1, -1.0, 0.3, 1, None, 12),
    ]
    (running,) = g.outcomes(rows)
    assert running.exit_reason is None
    assert running.probability == 0.9
    assert running.window == window(0, 0, 2)
    rows[1] = Outcome(1, -1.0, 0.3, 2, ExitReason.CONFIDENT_RELEVANT, 12)
    (done,) = g.outcomes(rows)
    assert done.exit_reason is ExitReason.CONFIDENT_RELEVANT
    assert done.exit_layer == 2
    assert done.tokens == 22


def test_min_score_drops_results_below_it_with_and_without_top_n() -> None:
    outcomes = [Outcome(i, 0.0, p, 1, ExitReason.DEPTH, 5) for i, p in enumerate([0.2, 0.7, 0.5, 0.9, 0.5])]
    assert [o.index for o in rank(outcomes, None, 0.5)] == [3, 1, 2, 4]
    assert [o.index for o in rank(outcomes, 2, 0.5)] == [3, 1]
    assert [o.index for o in rank(outcomes, 3, 0.75)] == [3]
    assert [o.index for o in rank(outcomes, None, 0.95)] == []
    assert len(rank(outcomes, None, 0.0)) == 5


def test_chunked_requests_go_through_the_cache(llama_model: MatryoshkaModel) -> None:
    reranker = Reranker(llama_model, cache=LayerCache(MemoryStore(), key_space(llama_model)))
    chunking = Chunking(6, 2)
    first = reranker.rerank(QUERY, LONG, Plan(), chunking=chunking)
    again = reranker.rerank(QUERY, LONG, Plan(), chunking=chunking)
    assert first.usage.rows == again.usage.rows > len(LONG)
    assert first.usage.cache_hits == 0
    assert again.usage.cache_hits == again.usage.rows
    assert again.usage.flops == 0
    assert [(r.index, r.window) for r in again.results] == [(r.index, r.window) for r in first.results]
    for a, b in zip(first.results, again.results, strict=True):
        assert b.score == pytest.approx(a.score, abs=1e-6)
        assert b.exit_reason is ExitReason.CACHE_HIT
    assert all(not math.isnan(r.score) for r in again.results)


def test_a_confident_window_stops_its_document_in_the_engine(llama_model: MatryoshkaModel) -> None:
    """Exits through the executor: with `relevant` at document 0's best layer-1 window, document 0
    stops at layer 1 (all its windows) while the others run on; the run processes fewer tokens."""
    chunking = Chunking(6, 2)
    job, layer1 = run_chunked(llama_model, Plan(depth=1), chunking)
    best = {o.index: o.probability for o in layer1.outcomes}
    threshold = best[0] - 1e-9
    assert all(best[d] < threshold for d in (1, 2)), best  # only document 0 clears it
    plan = Plan(confidence=ConfidenceExit(relevant=threshold, irrelevant=None, min_layer=1))
    _, full = run_chunked(llama_model, Plan(), chunking)
    _, early = run_chunked(llama_model, plan, chunking)
    doc0 = early.outcomes[0]
    assert (doc0.exit_layer, doc0.exit_reason) == (1, ExitReason.CONFIDENT_RELEVANT)
    assert doc0.window == layer1.outcomes[0].window
    depth = llama_model.backbone.num_layers
    assert all(o.exit_layer == depth for o in early.outcomes[1:])
    assert sum(w.document == 0 for w in job.windows or []) > 1
    saved = full.usage.layer_tokens - early.usage.layer_tokens
    assert saved == (depth - 1) * doc0.tokens  # every window of document 0 left after layer 1


def test_first_stage_scores_count_documents_not_windows(llama_model: MatryoshkaModel) -> None:
    """A chunked job carries one first-stage score per document (not per window) and ranks by the
    documents' fused keys."""
    plan = Plan().resolve(llama_model.info)
    job = Job(QUERY, LONG, plan, chunking=Chunking(6, 2, "max"), first_stage=[3.0, 2.0, 1.0])
    (result,) = Executor(llama_model).run([job])
    assert isinstance(result, JobResult)
    assert result.usage.rows > len(LONG)
    assert [o.index for o in result.outcomes] == [0, 1, 2]
    assert all(o.fused is not None and o.window is not None for o in result.outcomes)
