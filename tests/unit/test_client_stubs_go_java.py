"""The committed Go and Java stubs are exactly what their generate.sh makes from proto/ (not stale)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.toolchains import GO_TOOLS, JAVA_TOOLS, require

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("language", "tools"), [("go", GO_TOOLS), ("java", JAVA_TOOLS)])
def test_committed_stubs_match_proto(language: str, tools: tuple[str, ...]) -> None:
    require(*tools)
    script = ROOT / "clients" / language / "generate.sh"
    done = subprocess.run([str(script), "--check"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_go_sources_are_gofmt_clean() -> None:
    require("gofmt")
    done = subprocess.run(
        ["gofmt", "-l", str(ROOT / "clients" / "go")], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert not done.stdout, f"not gofmt-formatted:\n{done.stdout}"
