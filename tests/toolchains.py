"""The Go and Java toolchains the client tests need: skip without them, except in CI, where that fails.

scripts/client-toolchains.sh (run by make test) installs them (Debian 12 packages); a developer machine
may lack them. With CI=true a missing tool is an error, so CI can never pass by skipping the Go and Java
tests.
"""

from __future__ import annotations

import os
import shutil

import pytest

GO_TOOLS = ("go", "protoc", "protoc-gen-go", "protoc-gen-go-grpc")
JAVA_TOOLS = ("javac", "java", "protoc", "grpc_java_plugin")


def require(*tools: str) -> None:
    """Skip the calling test (fail it under CI=true) unless every tool is on PATH."""
    missing = [t for t in tools if shutil.which(t) is None]
    if not missing:
        return
    message = f"toolchain not installed: {', '.join(missing)} (run scripts/client-toolchains.sh as root)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + "; CI=true, so this is an error")
    pytest.skip(message)
