"""LlamaIndex node postprocessor for matryoshka-rerank: adaptive early-exit re-ranking over gRPC.

from llama_index.postprocessor.matryoshka import MatryoshkaPostprocessor

reranker = MatryoshkaPostprocessor(target="localhost:50051", top_n=3)
query_engine = index.as_query_engine(similarity_top_k=20, node_postprocessors=[reranker])
"""

from llama_index.postprocessor.matryoshka.base import MatryoshkaPostprocessor
from llama_index.postprocessor.matryoshka.errors import (
    MatryoshkaConfigurationError,
    MatryoshkaDeadlineError,
    MatryoshkaRerankError,
    MatryoshkaUnavailableError,
)

__all__ = [
    "MatryoshkaConfigurationError",
    "MatryoshkaDeadlineError",
    "MatryoshkaPostprocessor",
    "MatryoshkaRerankError",
    "MatryoshkaUnavailableError",
]
