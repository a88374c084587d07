"""Request ids and access-log lines over an in-process server (tiny model); health's Watch still streams."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from transformers import PreTrainedTokenizerFast

from matryoshka.engine.reranker import Reranker
from matryoshka.model.matryoshka_model import MatryoshkaModel
from matryoshka.server.settings import Settings
from matryoshka_client.proto import rerank_service_pb2 as pb
from matryoshka_client.proto import rerank_service_pb2_grpc as pb_grpc
from tests.conftest import tiny_llama
from tests.unit.inprocess import serving


@pytest.fixture(scope="module")
def channel(tiny_tokenizer: PreTrainedTokenizerFast) -> Iterator[grpc.Channel]:
    model = MatryoshkaModel.from_hf("tiny-llama", tiny_llama(), tiny_tokenizer)
    with (
        serving(Settings(port=0), Reranker(model)) as running,
        grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel,
    ):
        yield channel


def lines(caplog: pytest.LogCaptureFixture, request_id: str) -> list[dict[str, object]]:
    deadline = time.monotonic() + 5  # written just after the status is sent
    while time.monotonic() < deadline:
        found = [json.loads(r.getMessage()) for r in caplog.records if r.name == "matryoshka.access"]
        found = [line for line in found if line["request_id"] == request_id]
        if found:
            return found
        time.sleep(0.05)
    return []


def test_rerank_gets_an_id_and_one_line(channel: grpc.Channel, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="matryoshka.access")
    request = pb.RerankRequest(query="the cat", documents=[pb.Document(text="the cat sat")] * 3, depth=2)
    response = pb_grpc.RerankServiceStub(channel).Rerank(request, timeout=30)
    assert len(response.request_id) == 32
    (line,) = lines(caplog, response.request_id)
    assert (line["code"], line["documents"], line["exit_layers"]) == ("OK", 3, {"2": 3})
    assert "the cat" not in caplog.text


def test_health_watch_streams_through_the_interceptors(channel: grpc.Channel) -> None:
    watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=10)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    watch.cancel()


def test_an_over_long_request_id_is_cut_in_the_log(
    channel: grpc.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="matryoshka.access")
    request = pb.RerankRequest(
        query="the cat", documents=[pb.Document(text="the cat")], request_id="r" * 100_000
    )
    with pytest.raises(grpc.RpcError) as err:
        pb_grpc.RerankServiceStub(channel).Rerank(request, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    (line,) = lines(caplog, "r" * 128)
    assert line["code"] == "INVALID_ARGUMENT"
