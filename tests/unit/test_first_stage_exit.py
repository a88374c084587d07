"""The cascade's layer 0 (Plan.first_stage): only the first stage's best n documents run; the others stop
before layer 1, cost nothing and keep their first-stage place. Tiny random model: the checks are about
who runs, what it costs and the order, which a real model adds nothing to."""

from __future__ import annotations

import pytest

from matryoshka.engine.executor import Executor
from matryoshka.engine.exits import ExitReason
from matryoshka.engine.job import Job, JobResult
from matryoshka.engine.plan import CascadeExit, FirstStageExit, Plan, PlanError
from matryoshka.engine.reranker import rank
from matryoshka.model.matryoshka_model import MatryoshkaModel
from matryoshka.model.window import Chunking
from tests.conftest import PASSAGES

QUERY = "what is the capital of france"
FIRST = [3.0, 7.0, 1.0, 9.0, 5.0][: len(PASSAGES)]  # the first stage's order: 3, 1, 4, 0, 2


def run(model: MatryoshkaModel, plan: Plan, documents: list[str], **job: object) -> JobResult:
    (result,) = Executor(model).run([Job(QUERY, documents, plan.resolve(model.info), **job)])  # type: ignore[arg-type]
    assert isinstance(result, JobResult)
    return result


def test_only_the_first_stage_top_n_run_and_the_rest_cost_nothing(llama_model: MatryoshkaModel) -> None:
    depth = llama_model.info.num_layers
    cut = run(llama_model, Plan(first_stage=FirstStageExit(top_n=2)), PASSAGES, first_stage=FIRST)
    ran = {o.index for o in cut.outcomes if o.exit_layer == depth}
    assert ran == {3, 1}  # the two best first-stage scores
    for o in cut.outcomes:
        if o.index not in ran:
            assert (o.exit_layer, o.exit_reason, o.probability) == (0, ExitReason.CASCADE, 0.0)
    # the cost is exactly that of a job holding only the documents that ran, scored alike
    alone = run(llama_model, Plan(), [PASSAGES[3], PASSAGES[1]])
    assert cut.usage.flops == pytest.approx(alone.usage.flops, rel=1e-9)
    assert cut.usage.full_flops > alone.usage.full_flops  # saved against running every document
    full = run(llama_model, Plan(), PASSAGES, first_stage=FIRST)
    by_index = {o.index: o for o in full.outcomes}
    for o in cut.outcomes:
        if o.index in ran:  # a document that ran scores as in the full plan
            assert o.probability == pytest.approx(by_index[o.index].probability, abs=1e-5)
    # the stopped documents keep the first stage's order among themselves (their fused key is its z-score)
    tail = [o.index for o in rank(cut.outcomes) if o.index not in ran]
    assert tail == [4, 0, 2]


def test_without_first_stage_scores_the_input_order_decides(llama_model: MatryoshkaModel) -> None:
    result = run(llama_model, Plan(first_stage=FirstStageExit(top_n=3)), PASSAGES)
    assert [o.exit_layer > 0 for o in sorted(result.outcomes, key=lambda o: o.index)] == [
        True,
        True,
        True,
        False,
        False,
    ]
    assert [o.index for o in rank(result.outcomes)][3:] == [3, 4]  # unscored: input order, last


def test_a_top_n_as_large_as_the_request_changes_nothing(llama_model: MatryoshkaModel) -> None:
    plain = run(llama_model, Plan(), PASSAGES, first_stage=FIRST)
    cut = run(llama_model, Plan(first_stage=FirstStageExit(top_n=len(PASSAGES))), PASSAGES, first_stage=FIRST)
    assert [(o.index, o.exit_layer) for o in cut.outcomes] == [
        (o.index, o.exit_layer) for o in plain.outcomes
    ]
    assert cut.usage.flops == pytest.approx(plain.usage.flops, rel=1e-9)


def test_with_the_cascade_after_it(llama_model: MatryoshkaModel) -> None:
    """The first stage stops the tail at layer 0; the cascade then acts among those that ran exactly as
    on a request of only those documents (ranked by probability, the stopped ones never compete)."""
    cascade = CascadeExit(top_n=1, margin=0.0, patience=9, min_layer=llama_model.info.head_layers[0])
    cut = run(llama_model, Plan(first_stage=FirstStageExit(top_n=3), cascade=cascade), PASSAGES)
    alone = run(llama_model, Plan(cascade=cascade), PASSAGES[:3])
    assert any(o.exit_reason == ExitReason.CASCADE and o.exit_layer > 0 for o in alone.outcomes)
    got = {o.index: (o.exit_layer, o.exit_reason, round(o.probability, 5)) for o in cut.outcomes}
    assert [got[o.index] for o in alone.outcomes] == [
        (o.exit_layer, o.exit_reason, round(o.probability, 5)) for o in alone.outcomes
    ]
    assert got[3] == got[4] == (0, ExitReason.CASCADE, 0.0)
    assert cut.usage.flops == pytest.approx(alone.usage.flops, rel=1e-9)


def test_chunked_documents_are_kept_or_stopped_whole(llama_model: MatryoshkaModel) -> None:
    docs = [
        "the cat sat on the mat the dog ran to the park the sun is a hot star paris is the capital",
        "blue sky and green tree the river water is blue which city is the capital the cat sat",
        "water is blue",
    ]
    result = run(
        llama_model,
        Plan(first_stage=FirstStageExit(top_n=1)),
        docs,
        chunking=Chunking(6, 2, "max"),
        first_stage=[1.0, 2.0, 0.0],
    )
    assert result.usage.rows > len(docs)  # windows are the rows
    ran = {o.index for o in result.outcomes if o.exit_layer > 0}
    assert ran == {1}
    assert result.usage.flops == pytest.approx(
        run(llama_model, Plan(), [docs[1]], chunking=Chunking(6, 2, "max")).usage.flops, rel=1e-9
    )


def test_a_top_n_below_one_is_refused(llama_model: MatryoshkaModel) -> None:
    with pytest.raises(PlanError) as caught:
        Plan(first_stage=FirstStageExit(top_n=0)).resolve(llama_model.info)
    assert [v.field for v in caught.value.violations] == ["first_stage.top_n"]
    assert Plan(first_stage=FirstStageExit(top_n=1)).adaptive
