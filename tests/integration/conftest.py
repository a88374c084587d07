"""Real servers: `python -m matryoshka serve` subprocesses on free loopback ports, real weights."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProcess:
    """A server subprocess and its address."""

    process: subprocess.Popen[str]
    port: int
    env: dict[str, str]
    log: IO[str]  # stdout + stderr (a file, so a chatty server never blocks on a full pipe)
    credentials: grpc.ChannelCredentials | None = None  # what health checks connect with (TLS servers)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def output(self) -> str:
        """Everything the server has printed so far."""
        self.log.flush()
        with open(self.log.name) as f:
            return f.read()

    def channel(self) -> grpc.Channel:
        """A channel as the health checks use: TLS with `credentials` when set."""
        if self.credentials is not None:
            return grpc.secure_channel(self.target, self.credentials)
        return grpc.insecure_channel(self.target)

    def health(self, timeout: float = 1.0) -> int | None:
        """The overall health status, or None when the port does not answer yet."""
        with self.channel() as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=timeout
                )
            except grpc.RpcError:
                return None
        return int(reply.status)

    def wait_serving(self, timeout: float = 300.0) -> list[int | None]:
        """Poll health until SERVING; returns every status seen on the way."""
        seen: list[int | None] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}: {self.output()}")
            status = self.health()
            if not seen or seen[-1] != status:
                seen.append(status)
            if status == health_pb2.HealthCheckResponse.SERVING:
                return seen
            time.sleep(0.05)
        raise TimeoutError(f"server not SERVING after {timeout}s; saw {seen}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def launch(credentials: grpc.ChannelCredentials | None = None, **env: str) -> ServerProcess:
    """Start a server with MATRYOSHKA_* settings from `env` (not waiting for it); `credentials` are what
    its health checks connect with."""
    port = free_port()
    environ = {**os.environ, "MATRYOSHKA_PORT": str(port), "MATRYOSHKA_DTYPE": "float32", **env}
    log = tempfile.NamedTemporaryFile("w+", prefix="matryoshka-server-", suffix=".log")  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "-m", "matryoshka", "serve"],
        env=environ,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return ServerProcess(process, port, env, log, credentials)


@pytest.fixture(scope="session")
def default_server() -> Iterator[ServerProcess]:
    """The embedded default model as `matryoshka serve` runs it (query-likelihood scoring)."""
    server = launch()
    try:
        server.wait_serving()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def heads_server() -> Iterator[ServerProcess]:
    """SmolLM2 with per-layer heads: cheap scores at every layer (budgets, cancellation, limits)."""
    server = launch(
        MATRYOSHKA_SCORING="heads",
        MATRYOSHKA_MAX_DOCUMENTS="64",
        MATRYOSHKA_MAX_QUEUE="8",
        MATRYOSHKA_METRICS_PORT=str(free_port()),
    )
    try:
        server.wait_serving()
        yield server
    finally:
        server.stop()


@dataclass
class RedisProcess:
    """A throwaway `redis-server` on a free loopback port (no persistence); can be killed and restarted."""

    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--enable-debug-command",  # DEBUG SLEEP plays a slow Redis
                "local",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise TimeoutError(f"redis-server did not listen on {self.port}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisProcess]:
    """A real Redis for the cache tests (skipped where redis-server is not installed)."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = RedisProcess(free_port())
    server.start()
    try:
        yield server
    finally:
        server.kill()
