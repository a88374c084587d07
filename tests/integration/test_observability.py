"""What operators see of a real server: one access-log line per RPC, queue wait and batch metrics."""

from __future__ import annotations

import json
import time
import urllib.request

import grpc
import pytest

from matryoshka_client import RerankClient
from matryoshka_client.proto import rerank_service_pb2 as pb
from matryoshka_client.proto import rerank_service_pb2_grpc as pb_grpc
from tests.integration.conftest import ServerProcess

pytestmark = pytest.mark.slow

QUERY = "who wrote romeo and juliet"
SECRET_TEXT = "Juliet's private diary entry number 4711"


def access_lines(server: ServerProcess) -> list[dict[str, object]]:
    """The server's access-log lines, parsed."""
    lines = [
        line.split("matryoshka.access: ", 1)[1]
        for line in server.output().splitlines()
        if "matryoshka.access: " in line
    ]
    return [json.loads(line) for line in lines]


def test_one_access_log_line_per_rpc_without_text(heads_server: ServerProcess) -> None:
    with RerankClient(heads_server.target) as client:
        client.rerank(QUERY, [SECRET_TEXT, "Bananas."], depth=3, request_id="log-me")
        assigned = client.rerank(QUERY, ["Bananas."], depth=2).request_id
        list(client.stream_rerank(QUERY, ["Bananas.", "Apples."], depth=2, request_id="log-stream"))
    bad = pb.RerankRequest(
        query=QUERY, documents=[pb.Document(text=SECRET_TEXT)], depth=99, request_id="log-bad"
    )
    with grpc.insecure_channel(heads_server.target) as channel, pytest.raises(grpc.RpcError):
        pb_grpc.RerankServiceStub(channel).Rerank(bad, timeout=30)
    deadline = time.monotonic() + 10  # a line is written just after its status is sent
    lines = {line["request_id"]: line for line in access_lines(heads_server)}
    while "log-bad" not in lines and time.monotonic() < deadline:
        time.sleep(0.1)
        lines = {line["request_id"]: line for line in access_lines(heads_server)}
    assert len(assigned) == 32  # the server assigned one
    ok = lines["log-me"]
    assert (ok["method"], ok["code"], ok["documents"], ok["exit_layers"]) == (
        "/matryoshka.v1.RerankService/Rerank",
        "OK",
        2,
        {"3": 2},
    )
    assert isinstance(ok["latency_ms"], float)
    assert lines[assigned]["exit_layers"] == {"2": 1}
    assert lines["log-stream"]["method"].endswith("/StreamRerank")  # type: ignore[union-attr]
    assert lines["log-stream"]["exit_layers"] == {"2": 2}
    assert lines["log-bad"]["code"] == "INVALID_ARGUMENT"
    assert SECRET_TEXT not in heads_server.output()


def test_queue_wait_and_batch_size_metrics(heads_server: ServerProcess) -> None:
    with RerankClient(heads_server.target) as client:
        client.rerank(QUERY, ["Bananas.", "Apples.", "Pears."], depth=2)
    port = int(heads_server.env["MATRYOSHKA_METRICS_PORT"])
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert "matryoshka_queue_wait_seconds_count" in body
    assert "matryoshka_batch_requests_bucket" in body
    assert 'matryoshka_batch_documents_bucket{le="4.0",model="smollm2-135m"}' in body
