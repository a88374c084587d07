"""documents[i].first_stage_score over a real in-process gRPC server (tiny random model: the checks are
about the wire and the order, which a real model adds nothing to): validated with field paths, carried
into the engine, and a budget-cut answer follows it."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import replace

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from transformers import PreTrainedTokenizerFast

from matryoshka.engine.plan import Budget, CascadeExit, FirstStageExit, Plan
from matryoshka.engine.reranker import Reranker
from matryoshka.model.matryoshka_model import MatryoshkaModel, PlanSpec
from matryoshka.server.answer import budget_plan_text
from matryoshka.server.settings import Settings
from matryoshka.server.translate import to_call
from matryoshka_client.proto import rerank_service_pb2 as pb
from tests.conftest import PASSAGES, tiny_llama
from tests.unit.inprocess import serving

NAME = "tiny-llama"
QUERY = "what is the capital of france"
SERVICE = "/matryoshka.v1.RerankService/Rerank"
FIRST = [3.0, 7.0, 1.0, 9.0, 5.0, 2.0, 8.0, 4.0, 6.0, 0.0][: len(PASSAGES)]


@pytest.fixture(scope="module")
def model(tiny_tokenizer: PreTrainedTokenizerFast) -> MatryoshkaModel:
    return MatryoshkaModel.from_hf(NAME, tiny_llama(), tiny_tokenizer)


@pytest.fixture(scope="module")
def channel(model: MatryoshkaModel) -> Iterator[grpc.Channel]:
    with (
        serving(Settings(port=0), Reranker(model)) as running,
        grpc.insecure_channel(f"127.0.0.1:{running.port}") as chan,
    ):
        yield chan


def request(scores: list[float | None], **fields: object) -> pb.RerankRequest:
    docs = [
        pb.Document(text=p) if s is None else pb.Document(text=p, first_stage_score=s)
        for p, s in zip(PASSAGES, scores, strict=True)
    ]
    return pb.RerankRequest(query=QUERY, documents=docs, **fields)  # type: ignore[arg-type]


def rerank(channel: grpc.Channel, req: pb.RerankRequest) -> pb.RerankResponse:
    raw = channel.unary_unary(SERVICE)(req.SerializeToString(), timeout=60)
    return pb.RerankResponse.FromString(raw)


def violations(channel: grpc.Channel, req: pb.RerankRequest) -> dict[str, str]:
    with pytest.raises(grpc.RpcError) as caught:
        rerank(channel, req)
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    bad = error_details_pb2.BadRequest()
    assert any(d.Unpack(bad) for d in status.details)
    return {v.field: v.description for v in bad.field_violations}


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_score_that_is_not_finite_names_its_document(channel: grpc.Channel, bad: float) -> None:
    scores: list[float | None] = list(FIRST)
    scores[2] = bad
    found = violations(channel, request(scores))
    assert list(found) == ["documents[2].first_stage_score"]
    assert "finite" in found["documents[2].first_stage_score"]


def test_scores_on_some_documents_only_are_refused(channel: grpc.Channel) -> None:
    scores: list[float | None] = list(FIRST)
    scores[1] = scores[4] = None
    found = violations(channel, request(scores))
    assert set(found) == {"documents[1].first_stage_score", "documents[4].first_stage_score"}
    assert all("every document or on none" in d for d in found.values())


def test_a_budget_cut_answer_follows_the_first_stage(channel: grpc.Channel) -> None:
    tiny = pb.Budget(max_flops=1.0)  # smaller than any layer: no head is reached
    answer = rerank(channel, request(list(FIRST), budget=tiny, depth=4))
    assert answer.partial
    assert all(r.exit_layer == 0 and r.exit_reason == pb.EXIT_REASON_BUDGET for r in answer.results)
    assert [r.index for r in answer.results] == sorted(range(len(FIRST)), key=lambda i: -FIRST[i])
    plain = rerank(channel, request([None] * len(FIRST), budget=tiny, depth=4))
    assert [r.index for r in plain.results] == list(range(len(FIRST)))  # no scores: the input order


def test_scores_are_accepted_and_every_document_answered(channel: grpc.Channel) -> None:
    answer = rerank(channel, request(list(FIRST)))
    assert sorted(r.index for r in answer.results) == list(range(len(FIRST)))
    assert not answer.partial


def test_a_budget_only_request_keeps_the_full_plan_and_carries_the_scores(model: MatryoshkaModel) -> None:
    """A model without a budget plan (ModelInfo.budget_plan) runs the full plan under the budget."""
    call = to_call(
        request(list(FIRST), budget=pb.Budget(max_flops=1e15)), {NAME: model.info}, NAME, Settings()
    )
    assert call.plan == Plan(budget=Budget(max_flops=1e15)).resolve(model.info)
    assert call.first_stage == FIRST
    unscored = to_call(request([None] * len(FIRST)), {NAME: model.info}, NAME, Settings())
    assert unscored.first_stage is None


def test_only_the_first_stage_top_n_run(channel: grpc.Channel) -> None:
    """early_exit.first_stage: the two best first-stage documents run, the rest stop before layer 1
    (score 0, exit_layer 0, CASCADE) in the first stage's order, and the FLOPs they did not need are saved."""
    cut = pb.EarlyExit(first_stage=pb.FirstStageExit(top_n=2))
    answer = rerank(channel, request(list(FIRST), early_exit=cut))
    assert not answer.partial
    best = sorted(range(len(FIRST)), key=lambda i: -FIRST[i])
    ran = {r.index for r in answer.results if r.exit_layer > 0}
    assert ran == set(best[:2])
    tail = [r for r in answer.results if r.index not in ran]
    assert all(r.exit_reason == pb.EXIT_REASON_CASCADE and r.score == 0.0 for r in tail)
    assert [r.index for r in tail] == best[2:]
    assert answer.usage.flops_saved > 0.4  # three of five documents never ran


def test_a_first_stage_top_n_below_one_names_its_field(channel: grpc.Channel) -> None:
    bad = pb.EarlyExit(first_stage=pb.FirstStageExit(top_n=0))
    assert "early_exit.first_stage.top_n" in violations(channel, request(list(FIRST), early_exit=bad))


def test_a_budget_only_request_runs_the_model_budget_plan(model: MatryoshkaModel) -> None:
    """Where the model names a budget plan, a request giving only a budget runs it; one that shapes its
    own plan (depth, width or early_exit) keeps its own."""
    spec = PlanSpec(first_stage_top_n=2, cascade_top_n=1, cascade_min_layer=2)
    info = replace(model.info, plans={"adaptive": spec}, budget_plan="adaptive")
    budget = pb.Budget(max_flops=1e15)
    call = to_call(request(list(FIRST), budget=budget), {NAME: info}, NAME, Settings())
    expected = Plan(
        first_stage=FirstStageExit(top_n=2),
        cascade=CascadeExit(top_n=1, margin=0.0, patience=info.num_layers, min_layer=2),
        budget=Budget(max_flops=1e15),
    )
    assert call.plan == expected.resolve(info)
    own = to_call(request(list(FIRST), budget=budget, depth=3), {NAME: info}, NAME, Settings())
    assert own.plan == Plan(depth=3, budget=Budget(max_flops=1e15)).resolve(info)
    assert budget_plan_text(info) == "adaptive: full depth, first stage top 2, cascade top 1 from layer 2"
    assert budget_plan_text(model.info) == ""
