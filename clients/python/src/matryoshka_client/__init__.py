"""Python client of the matryoshka-rerank service: adaptive early-exit re-ranking over gRPC.

    from matryoshka_client import RerankClient, ConfidenceExit

    with RerankClient("localhost:50051") as client:
        result = client.rerank(
            "what is the capital of france?",
            ["paris is the capital of france", ("doc-7", "the sun is a star"), {"id": "x", "text": "..."}],
            top_n=2,
            confidence=ConfidenceExit(),  # let confident candidates stop early (server defaults)
        )
        for doc in result.results:
            print(doc.index, doc.id, doc.score, doc.exit_layer, doc.exit_reason)

Long documents: `chunking=Chunking(window_tokens=128, overlap_tokens=32)` scores each in windows and
`doc.window` names the one that decided it (`doc.window.text(text)`); `min_score=0.5` drops weak
results; `Document(text, id=..., first_stage_score=bm25)` passes the retriever's score along.

`AsyncRerankClient` is the asyncio twin. The generated stubs are in `matryoshka_client.proto`.
"""

from importlib.metadata import PackageNotFoundError, version

from matryoshka_client._aio import AsyncRerankClient
from matryoshka_client._common import MetadataInput
from matryoshka_client._errors import FieldViolation, RerankError
from matryoshka_client._security import PemInput, tls_credentials
from matryoshka_client._sync import RerankClient
from matryoshka_client._types import (
    Aggregate,
    Budget,
    CacheMode,
    CascadeExit,
    Chunking,
    ConfidenceExit,
    Document,
    DocumentInput,
    ModelInfo,
    ModelLimits,
    RerankOptions,
    RerankResult,
    RerankStage,
    ScoredDocument,
    ScoreType,
    Timing,
    Truncation,
    TruncationSide,
    Usage,
    WidthStep,
    Window,
)

try:
    __version__ = version("matryoshka-rerank-client")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "Aggregate",
    "AsyncRerankClient",
    "Budget",
    "CacheMode",
    "CascadeExit",
    "Chunking",
    "ConfidenceExit",
    "Document",
    "DocumentInput",
    "FieldViolation",
    "MetadataInput",
    "ModelInfo",
    "ModelLimits",
    "PemInput",
    "RerankClient",
    "RerankError",
    "RerankOptions",
    "RerankResult",
    "RerankStage",
    "ScoreType",
    "ScoredDocument",
    "Timing",
    "Truncation",
    "TruncationSide",
    "Usage",
    "WidthStep",
    "Window",
    "__version__",
    "tls_credentials",
]
