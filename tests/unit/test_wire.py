"""Decoding requests off the wire: what does not decode names its field; NaN scores never vanish."""

from __future__ import annotations

import pytest

from matryoshka.engine.exits import ExitReason
from matryoshka.engine.job import Outcome
from matryoshka.engine.plan import Plan
from matryoshka.model.matryoshka_model import MatryoshkaModel
from matryoshka.model.prompt import Truncation
from matryoshka.server.translate import NonFiniteScoreError, RerankCall, to_results
from matryoshka.server.wire import Undecodable, decoder, find_violations
from matryoshka_client.proto import rerank_service_pb2 as pb

MARK = "\u00a7MARK\u00a7"


def broken(message: pb.RerankRequest | pb.StreamRerankRequest) -> bytes:
    data = message.SerializeToString()
    return data.replace(MARK.encode(), b"\xff" * len(MARK.encode()))


@pytest.mark.parametrize(
    ("message", "field"),
    [
        (pb.RerankRequest(query=MARK), "query"),
        (
            pb.RerankRequest(documents=[pb.Document(text="a"), pb.Document(text="b", id=MARK)]),
            "documents[1].id",
        ),
        (
            pb.StreamRerankRequest(request=pb.RerankRequest(documents=[pb.Document(text=MARK)])),
            "request.documents[0].text",
        ),
    ],
)
def test_invalid_utf8_names_the_field(message: pb.RerankRequest | pb.StreamRerankRequest, field: str) -> None:
    decoded = decoder(type(message))(broken(message))
    assert isinstance(decoded, Undecodable)
    assert [v.field for v in decoded.error.violations] == [field]


def test_valid_bytes_decode_and_truncated_bytes_name_the_break() -> None:
    request = pb.RerankRequest(query="q", documents=[pb.Document(text="a document")])
    assert decoder(pb.RerankRequest)(request.SerializeToString()) == request
    violations = find_violations(pb.RerankRequest.DESCRIPTOR, request.SerializeToString()[:-2])
    assert [v.field for v in violations] == ["documents[0]"]
    decoded = decoder(pb.RerankRequest)(b"\x0f")  # wire type 7 does not exist
    assert isinstance(decoded, Undecodable)
    assert decoded.error.violations[0].description.startswith("malformed")


def test_a_nan_score_is_an_error_not_a_dropped_document() -> None:
    call = RerankCall(
        "m", "q", ["a", "b"], ["", ""], Plan(depth=1), Truncation(), None, "probability", False, "r"
    )
    outcomes = [
        Outcome(0, 1.0, 0.7, 1, ExitReason.DEPTH, 3),
        Outcome(1, float("nan"), float("nan"), 1, ExitReason.DEPTH, 3),
    ]
    with pytest.raises(NonFiniteScoreError, match=r"\[1\]"):
        to_results(call, outcomes)
    assert len(to_results(call, outcomes, running_ok=True)) == 1  # a stage: row 1 not scored yet


@pytest.mark.parametrize(
    ("scoring", "mode"),
    [
        ("heads", pb.SCORING_MODE_HEADS),
        ("query_likelihood", pb.SCORING_MODE_QUERY_LIKELIHOOD),
        ("cosine", pb.SCORING_MODE_COSINE),
    ],
)
def test_every_scoring_mode_has_a_wire_name(scoring: str, mode: int) -> None:
    from matryoshka.model.matryoshka_model import ModelInfo
    from matryoshka.server.settings import Settings
    from matryoshka.server.translate import to_model_info

    info = ModelInfo("m", "encoder", 6, 384, (2, 4, 6), scoring, "v1", "fp", "identity")  # type: ignore[arg-type]
    message = to_model_info(info, Settings(), "float32")
    assert (message.scoring, list(message.head_layers), message.dtype) == (mode, [2, 4, 6], "float32")


def test_chunking_and_min_score_translate_and_their_violations_name_the_fields(
    llama_model: MatryoshkaModel,
) -> None:
    from matryoshka.model.window import Chunking, Window
    from matryoshka.server.settings import Settings
    from matryoshka.server.translate import InvalidRequest, check_windows, to_call

    settings = Settings(max_windows_per_document=3, max_windows_per_request=5)
    models = {llama_model.info.name: llama_model.info}
    docs = [pb.Document(text="the cat sat"), pb.Document(text="the dog ran")]
    ok = pb.RerankRequest(
        query="q",
        documents=docs,
        chunking=pb.Chunking(window_tokens=8, overlap_tokens=2, aggregate=pb.AGGREGATE_MEAN),
        min_score=0.25,
    )
    call = to_call(ok, models, llama_model.info.name, settings)
    assert (call.chunking, call.min_score) == (Chunking(8, 2, "mean"), 0.25)
    plain = to_call(pb.RerankRequest(query="q", documents=docs), models, llama_model.info.name, settings)
    assert (plain.chunking, plain.min_score) == (None, None)
    bad = pb.RerankRequest(
        query="q",
        documents=docs,
        chunking=pb.Chunking(window_tokens=settings.max_document_tokens + 1, overlap_tokens=-1, aggregate=7),
        min_score=float("nan"),
    )
    with pytest.raises(InvalidRequest) as caught:
        to_call(bad, models, llama_model.info.name, settings)
    fields = {v.field for v in caught.value.violations}
    assert fields == {"chunking.window_tokens", "chunking.overlap_tokens", "chunking.aggregate", "min_score"}
    windows = [Window(0, i, 4, i, i + 1) for i in range(4)] + [Window(1, i, 2, i, i + 1) for i in range(2)]
    with pytest.raises(InvalidRequest) as caught:
        check_windows(windows, settings)
    assert [v.field for v in caught.value.violations] == ["documents[0].text", "chunking"]
    check_windows(windows[:3] + windows[4:], settings)  # 3 + 2 windows: within both limits


def test_results_carry_their_window_and_min_score_applies_to_final_answers_only() -> None:
    from matryoshka.model.window import Window

    call = RerankCall(
        "m",
        "q",
        ["a", "b"],
        ["", ""],
        Plan(depth=1),
        Truncation(),
        None,
        "probability",
        False,
        "r",
        min_score=0.5,
    )
    outcomes = [
        Outcome(0, 1.0, 0.7, 1, ExitReason.DEPTH, 3, window=Window(0, 2, 3, 10, 20)),
        Outcome(1, -1.0, 0.3, 1, None, 3, window=Window(1, 0, 1, 0, 5)),
    ]
    (kept,) = to_results(call, [outcomes[0], Outcome(1, -1.0, 0.3, 1, ExitReason.DEPTH, 3)])
    assert kept.index == 0
    assert (kept.window.index, kept.window.count, kept.window.start, kept.window.end) == (2, 3, 10, 20)
    staged = to_results(call, outcomes, running_ok=True)
    assert [r.index for r in staged] == [0, 1]  # a stage shows every candidate so far
