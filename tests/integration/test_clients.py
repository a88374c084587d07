"""The Go and Java clients (clients/go, clients/java) against a real server: ranking, errors, info, health.

Each language's own tests do the asserting (Go: `go test`, Java: a JUnit 4 class); here they are built
offline against Debian's packages and pointed at the session's server through MATRYOSHKA_TARGET, and
the example programs are run once each.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import ServerProcess
from tests.toolchains import GO_TOOLS, JAVA_TOOLS, require

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
GO = ROOT / "clients" / "go" / "go.sh"
JAVA_BUILD = ROOT / "clients" / "java" / "build.sh"
JAVA_PACKAGE = "dev.matryoshka.rerank.client"
QUERY = "who wrote romeo and juliet"
DOCS = [
    "Bananas are rich in potassium.",
    "Romeo and Juliet is a tragedy written by William Shakespeare early in his career.",
    "The stock market fell sharply on Monday.",
]
GO_LIVE_TESTS = (
    "TestLiveRerankRanksTheAnswerFirst",
    "TestLiveBadRequestNamesTheFields",
    "TestLiveModelInfoAndHealth",
    "TestLiveChunkedWindowSlicesTheText",
    "TestLiveBadChunkingNamesTheFields",
)


def run(*args: str | Path, target: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command to success; `target` (a server address) goes to it as MATRYOSHKA_TARGET."""
    env = dict(os.environ) if target is None else {**os.environ, "MATRYOSHKA_TARGET": target}
    done = subprocess.run(
        [str(a) for a in args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"{args} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="session")
def java_classpath(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The Java client, example and tests compiled once per session; their runtime classpath."""
    require(*JAVA_TOOLS)
    out = tmp_path_factory.mktemp("java")
    run(JAVA_BUILD, out)
    return (out / "classpath").read_text().strip()


def test_go_client_tests_pass_against_the_server(default_server: ServerProcess) -> None:
    require(*GO_TOOLS)
    done = run(GO, "test", "-count=1", "-v", "./...", target=default_server.target)
    for name in GO_LIVE_TESTS:  # passed, not skipped
        assert f"--- PASS: {name} " in done.stdout, done.stdout


def test_go_example_ranks_the_answer_first(default_server: ServerProcess, tmp_path: Path) -> None:
    require(*GO_TOOLS)
    binary = tmp_path / "rerank"
    run(GO, "build", "-o", binary, "./cmd/rerank")
    done = run(binary, "-target", default_server.target, "-budget", "60s", QUERY, *DOCS)
    assert done.stdout.splitlines()[0].split("\t")[0] == "1", done.stdout


def test_java_client_tests_pass_against_the_server(
    default_server: ServerProcess, java_classpath: str
) -> None:
    done = run(
        "java",
        "-cp",
        java_classpath,
        "org.junit.runner.JUnitCore",
        f"{JAVA_PACKAGE}.RerankClientTest",
        target=default_server.target,
    )
    assert "OK (" in done.stdout, done.stdout


def test_java_example_ranks_the_answer_first(default_server: ServerProcess, java_classpath: str) -> None:
    done = run(
        "java",
        "-cp",
        java_classpath,
        f"{JAVA_PACKAGE}.Example",
        default_server.target,
        "60000",
        QUERY,
        *DOCS,
    )
    assert done.stdout.splitlines()[0].split("\t")[0] == "1", done.stdout
