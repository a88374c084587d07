"""Load benchmark: closed-loop gRPC clients against a server on loopback, sending real passages (a
query's BM25 candidates from a BEIR folder with a TREC run). Each scenario issues requests for a fixed
time, then waits for the calls in flight; every call has a timeout, so a run is bounded in time.

Reported per scenario: throughput (pairs/s of answered requests), p50/p90/p99 latency, the fraction
answered within the budget, the partial rate and errors by status code. The mixed run measures short
requests' p99 alone and beside long ones.
"""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from matryoshka.data.datasets import document_text, load_collection, rank_documents, read_run
from matryoshka_client import Budget, RerankClient, RerankError

LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


@dataclass(frozen=True)
class Scenario:
    """Closed-loop clients sending `documents` candidates at `depth` (0 = full) with an optional budget."""

    clients: int
    documents: int
    depth: int = 0
    budget: float | None = None


@dataclass(frozen=True)
class Sample:
    """One call: client-side latency, pairs sent, and how it ended."""

    seconds: float
    pairs: int
    code: str  # "OK" or the status code name
    partial: bool = False
    exit_layer: float = 0.0  # mean over the answered documents
    scored: int = 0  # documents that reached a head (exit layer > 0; 0 = input order, no score)


def workload(data: Path, run_name: str, documents: int) -> list[tuple[str, list[str]]]:
    """(query, top-`documents` candidate texts) for every query of the run, in the run's order."""
    collection = load_collection(data)
    run = read_run(data / "runs" / run_name, collection)
    return [
        (
            collection.queries[qid],
            [document_text(collection.corpus[d]) for d, _ in rank_documents(r)[:documents]],
        )
        for qid, r in run.items()
        if len(r) >= documents
    ]


def drive(
    target: str, scenario: Scenario, requests: list[tuple[str, list[str]]], seconds: float, offset: int = 0
) -> tuple[list[Sample], float]:
    """Run one scenario for `seconds` of issuing; returns its samples and its wall time."""
    samples: list[Sample] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds
    timeout = max(10 * seconds, 120.0)

    def client(index: int) -> None:
        n = offset + index * 7
        with RerankClient(target, timeout=timeout) as rc:
            while time.monotonic() < stop:
                query, docs = requests[n % len(requests)]
                n += 1
                docs = docs[: scenario.documents]
                budget = Budget(max_latency=scenario.budget) if scenario.budget else None
                tick = time.monotonic()
                try:
                    result = rc.rerank(  # the cache bypassed: requests repeat, and hits would be no load
                        query, docs, depth=scenario.depth, budget=budget, cache_mode="bypass"
                    )
                    took = time.monotonic() - tick
                    layers = [d.exit_layer for d in result.results]
                    mean = sum(layers) / max(len(layers), 1)
                    sample = Sample(took, len(docs), "OK", result.partial, mean, sum(x > 0 for x in layers))
                except RerankError as exc:
                    sample = Sample(
                        time.monotonic() - tick, len(docs), getattr(exc.code, "name", str(exc.code))
                    )
                with lock:
                    samples.append(sample)

    start = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(scenario.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return samples, time.monotonic() - start


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (nearest rank), None without values."""
    if not values:
        return None
    ranked = sorted(values)
    return ranked[min(len(ranked) - 1, max(0, math.ceil(q / 100 * len(ranked)) - 1))]


def summarise(scenario: Scenario, samples: list[Sample], wall: float) -> dict[str, Any]:
    """Throughput, latency percentiles, within-budget fraction, partial rate and errors of one scenario."""
    ok = [s for s in samples if s.code == "OK"]
    latencies = [s.seconds for s in ok]
    figures: dict[str, Any] = {
        "clients": scenario.clients,
        "documents": scenario.documents,
        "depth": scenario.depth or "full",
        "budget_s": scenario.budget,
        "requests": len(samples),
        "answered": len(ok),
        "pairs_per_s": sum(s.pairs for s in ok) / wall if wall > 0 else 0.0,
        "scored_pairs_per_s": sum(s.scored for s in ok) / wall if wall > 0 else 0.0,
        "p50_s": percentile(latencies, 50),
        "p90_s": percentile(latencies, 90),
        "p99_s": percentile(latencies, 99),
        "partial_rate": sum(s.partial for s in ok) / len(ok) if ok else None,
        "mean_exit_layer": sum(s.exit_layer for s in ok) / len(ok) if ok else None,
        "errors": dict(Counter(s.code for s in samples if s.code != "OK")),
        "wall_s": wall,
    }
    if scenario.budget is not None:
        within = sum(s.code == "OK" and s.seconds <= scenario.budget for s in samples)
        figures["within_budget"] = within / len(samples) if samples else None
    return figures


def run(
    target: str | None = None,
    *,
    data: Path,
    run_name: str = "bm25.top100.trec",
    clients: tuple[int, ...] = (1, 4, 16),
    documents: int = 20,
    budget: float = 2.0,
    seconds: float = 20.0,
    server_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """All scenarios against `target` (a loopback address) or a server started here for the run."""
    if target is not None and target.rpartition(":")[0] not in LOOPBACK:
        raise ValueError(f"bench load drives loopback servers only, not {target}")
    requests = workload(data, run_name, max(documents, 100))
    with _server(target, server_env or {}) as address:
        with RerankClient(address, timeout=30) as rc:
            (info,) = rc.model_info()
        figures: dict[str, Any] = {
            "target": address,
            "model": info.name,
            "dtype": info.dtype,
            "data": f"{data.name} ({run_name})",
            "seconds_per_scenario": seconds,
            "scenarios": [],
        }
        for n in clients:
            for b in (None, budget):
                scenario = Scenario(n, documents, budget=b)
                figures["scenarios"].append(summarise(scenario, *drive(address, scenario, requests, seconds)))
        short_depth = next((h for h in info.head_layers if h >= 10), info.num_layers)
        short, long = Scenario(1, 5, depth=short_depth), Scenario(1, 100)
        alone = summarise(short, *drive(address, short, requests, seconds))
        figures["mixed"] = {"short_alone": alone, **_mixed(address, short, long, requests, seconds)}
        p99_alone, p99_mixed = alone["p99_s"], figures["mixed"]["short_beside_long"]["p99_s"]
        figures["mixed"]["short_p99_ratio"] = p99_mixed / p99_alone if p99_alone and p99_mixed else None
    return figures


def _mixed(
    target: str, short: Scenario, long: Scenario, requests: list[tuple[str, list[str]]], seconds: float
) -> dict[str, Any]:
    """Short requests in one closed loop while two clients send long ones."""
    out: dict[str, Any] = {}

    def long_clients() -> None:
        scenario = Scenario(2, long.documents, long.depth)
        out["long"] = summarise(scenario, *drive(target, scenario, requests, seconds, offset=3))

    background = threading.Thread(target=long_clients)
    background.start()
    time.sleep(1.0)  # the long requests are running before the short ones start
    out["short_beside_long"] = summarise(short, *drive(target, short, requests, seconds - 1.0))
    background.join()
    return out


@contextmanager
def _server(target: str | None, env: dict[str, str]) -> Iterator[str]:
    """Yield `target`, or start `matryoshka serve` on a free loopback port and stop it afterwards."""
    if target is not None:
        yield target
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    environ = {**os.environ, "MATRYOSHKA_HOST": "127.0.0.1", "MATRYOSHKA_PORT": str(port), **env}
    process = subprocess.Popen(
        [sys.executable, "-m", "matryoshka", "serve"], env=environ, stdout=subprocess.DEVNULL
    )
    address = f"127.0.0.1:{port}"
    try:
        _wait_serving(address, process)
        yield address
    finally:
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_serving(address: str, process: subprocess.Popen[bytes], timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with {process.returncode}")
            try:
                if (
                    stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                    == health_pb2.HealthCheckResponse.SERVING
                ):
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise TimeoutError(f"the server at {address} was not SERVING after {timeout:.0f}s")
