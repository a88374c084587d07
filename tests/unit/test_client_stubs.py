"""The committed Python stubs are exactly what generate.py makes from proto/ (no hand edits, not stale)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GENERATE = ROOT / "clients" / "python" / "generate.py"
COMMITTED = ROOT / "clients" / "python" / "src" / "matryoshka_client" / "_proto"


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("stubs")
    subprocess.run([sys.executable, str(GENERATE), "--out", str(out)], check=True, capture_output=True)
    return _tree(out)


def test_committed_stubs_match_a_fresh_generation(fresh: dict[str, bytes]) -> None:
    committed = _tree(COMMITTED)
    assert sorted(committed) == sorted(fresh), "run: python clients/python/generate.py"
    stale = [name for name in fresh if committed[name] != fresh[name]]
    assert not stale, f"stale generated files {stale}; run: python clients/python/generate.py"


def test_generation_covers_messages_services_and_type_stubs(fresh: dict[str, bytes]) -> None:
    assert {
        "__init__.py",
        "matryoshka/__init__.py",
        "matryoshka/v1/__init__.py",
        "matryoshka/v1/rerank_service_pb2.py",
        "matryoshka/v1/rerank_service_pb2.pyi",
        "matryoshka/v1/rerank_service_pb2_grpc.py",
        "matryoshka/v1/rerank_service_pb2_grpc.pyi",
    } <= set(fresh)


def test_imports_point_inside_the_client_package(fresh: dict[str, bytes]) -> None:
    # protoc writes `from matryoshka.v1 import ...`, which would resolve to the server's package.
    for name, content in fresh.items():
        for line in content.decode().splitlines():
            assert not line.startswith(("from matryoshka.", "import matryoshka.")), (name, line)
    assert (
        b"from matryoshka_client._proto.matryoshka.v1 import rerank_service_pb2"
        in (fresh["matryoshka/v1/rerank_service_pb2_grpc.py"])
    )


def test_descriptors_keep_the_canonical_proto_name() -> None:
    from matryoshka_client.proto import rerank_service_pb2 as pb
    from matryoshka_client.proto import rerank_service_pb2_grpc as pb_grpc

    assert pb.DESCRIPTOR.name == "matryoshka/v1/rerank_service.proto"
    assert pb.DESCRIPTOR.package == "matryoshka.v1"
    service = pb.DESCRIPTOR.services_by_name["RerankService"]
    assert [m.name for m in service.methods] == ["Rerank", "StreamRerank", "GetModelInfo"]
    assert hasattr(pb_grpc, "add_RerankServiceServicer_to_server")


def test_enum_zero_values_are_unspecified() -> None:
    from matryoshka_client.proto import rerank_service_pb2 as pb

    for enum in pb.DESCRIPTOR.enum_types_by_name.values():
        assert enum.values_by_number[0].name.endswith("_UNSPECIFIED"), enum.name


def test_exit_reasons_mirror_the_engine() -> None:
    from matryoshka.engine.exits import ExitReason
    from matryoshka_client.proto import rerank_service_pb2 as pb

    names = {v.name.removeprefix("EXIT_REASON_").lower() for v in pb.ExitReason.DESCRIPTOR.values}
    assert names - {"unspecified"} == {r.value for r in ExitReason}


def test_check_mode_passes_on_the_committed_tree() -> None:
    done = subprocess.run([sys.executable, str(GENERATE), "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
