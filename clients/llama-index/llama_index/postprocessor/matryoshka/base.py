"""MatryoshkaPostprocessor: re-rank retrieved nodes through a matryoshka-rerank server."""

from __future__ import annotations

import asyncio
import math
import time
from datetime import timedelta
from typing import Any

import grpc
from llama_index.core.bridge.pydantic import Field, FilePath, PrivateAttr, SecretStr, field_validator
from llama_index.core.callbacks import CBEventType, EventPayload
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle
from matryoshka_client import (
    AsyncRerankClient,
    Budget,
    CacheMode,
    CascadeExit,
    Chunking,
    ConfidenceExit,
    Document,
    RerankClient,
    RerankError,
    RerankOptions,
    RerankResult,
    WidthStep,
)

from llama_index.postprocessor.matryoshka.errors import describe_failure, retry_delay

dispatcher = get_dispatcher(__name__)

WINDOW_KEYS = ("window_index", "window_count", "window_start", "window_end", "window_text")
"""Metadata of a node re-ranked with chunking: which of its windows decided its score, where that window
lies in the text the server read (code-point offsets, [start, end)) and the window's text."""

METADATA_KEYS = ("exit_layer", "exit_reason", "partial", "retrieval_score", *WINDOW_KEYS)
"""Node metadata this postprocessor writes (kept out of the LLM's and the embedder's view of the node)."""


class MatryoshkaPostprocessor(BaseNodePostprocessor):
    """Re-rank nodes with a matryoshka-rerank server: adaptive depth, width and early exits per request.

        reranker = MatryoshkaPostprocessor(target="localhost:50051", top_n=3, budget=0.5)
        engine = RetrieverQueryEngine.from_args(retriever, node_postprocessors=[reranker])

    Each returned node's score is the re-ranker's; its metadata gains `exit_layer`, `exit_reason`,
    `partial` (the budget cut the request short), with `keep_retrieval_score`, `retrieval_score`, and
    with `chunking`, the window that decided the score (WINDOW_KEYS). The retriever's scores go to the
    server as first-stage scores when every node has one (`send_retrieval_scores`).
    """

    target: str = Field(default="localhost:50051", min_length=1, description="Server address, host:port.")
    top_n: int = Field(default=2, ge=1, description="Number of nodes to return, best first.")
    model: str = Field(default="", description="Model to re-rank with; empty = the server's default.")
    depth: int | None = Field(default=None, ge=1, description="Last layer to run; None = full depth.")
    width: list[WidthStep] = Field(
        default_factory=list, description="Token-merge schedule: shrink documents after given layers."
    )
    early_exit: ConfidenceExit | None = Field(
        default=None,
        description="Confidence thresholds a candidate exits early on; ConfidenceExit() = server defaults.",
    )
    cascade: CascadeExit | None = Field(
        default=None, description="Top-n cascade: drop trailing candidates, stop once the top is stable."
    )
    first_stage_top_n: int | None = Field(
        default=None,
        ge=1,
        description="Only the retriever's best N nodes run the model; the rest keep their retrieval order "
        "below them at no cost. None = all run.",
    )
    budget: float | timedelta | None = Field(
        default=None,
        description="Wall-clock budget (seconds or timedelta); when it runs out the server returns its "
        "ranking so far (partial) instead of failing.",
    )
    budget_flops: float | None = Field(default=None, gt=0, description="FLOP budget for one request.")
    timeout: float | None = Field(
        default=60.0, gt=0, description="gRPC deadline per attempt, in seconds; None = no deadline."
    )
    cache_mode: CacheMode | None = Field(default=None, description="Server cache use; None = its default.")
    chunking: Chunking | None = Field(
        default=None,
        description="Score long nodes in overlapping token windows (e.g. Chunking(window_tokens=128, "
        "overlap_tokens=32)) instead of truncating them; None = no chunking.",
    )
    min_score: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Drop nodes whose calibrated probability of relevance is below this; None = keep all.",
    )
    send_retrieval_scores: bool = Field(
        default=True,
        description="Send each node's retriever score as its first-stage score when every node has a "
        "finite one; the server then never ranks worse than the retriever's order.",
    )
    metadata_mode: MetadataMode = Field(
        default=MetadataMode.EMBED, description="Which node metadata goes into the text the server reads."
    )
    keep_retrieval_score: bool = Field(
        default=False, description="Keep the retriever's score in node metadata as `retrieval_score`."
    )
    tls: bool = Field(default=False, description="Connect over TLS (implied by root_certificates).")
    root_certificates: FilePath | None = Field(
        default=None, description="PEM file of the root certificates to trust; None = the system's."
    )
    auth_token: SecretStr | None = Field(
        default=None, description="Bearer token sent as `authorization` metadata on every call."
    )
    max_retries: int = Field(
        default=2, ge=0, le=10, description="Retries on UNAVAILABLE or RESOURCE_EXHAUSTED; others fail."
    )
    retry_backoff: float = Field(
        default=0.1, ge=0, le=5, description="Seconds before the first retry, doubled for each next one."
    )

    _client: RerankClient = PrivateAttr()

    @field_validator("budget")
    @classmethod
    def _positive_budget(cls, value: float | timedelta | None) -> float | timedelta | None:
        seconds = value.total_seconds() if isinstance(value, timedelta) else value
        if seconds is not None and not (math.isfinite(seconds) and seconds > 0):
            raise ValueError(f"budget must be a positive, finite number of seconds, got {value!r}")
        return value

    @field_validator("width")
    @classmethod
    def _valid_width(cls, steps: list[WidthStep]) -> list[WidthStep]:
        for step in steps:
            if step.layer < 1:
                raise ValueError(f"width step layers are 1-based, got {step}")
            if (step.ratio is not None and not step.ratio >= 1) or (
                step.length is not None and step.length < 1
            ):
                raise ValueError(f"width step ratio must be >= 1 and length >= 1, got {step}")
        return steps

    @field_validator("early_exit")
    @classmethod
    def _valid_early_exit(cls, value: ConfidenceExit | None) -> ConfidenceExit | None:
        if value is None:
            return None
        for name in ("relevant", "irrelevant"):
            threshold = getattr(value, name)
            if threshold is not None and not 0.0 <= threshold <= 1.0:
                raise ValueError(f"early_exit.{name} is a probability in [0, 1], got {threshold}")
        if value.min_layer < 0:
            raise ValueError(f"early_exit.min_layer must be >= 0, got {value.min_layer}")
        return value

    @field_validator("cascade")
    @classmethod
    def _valid_cascade(cls, value: CascadeExit | None) -> CascadeExit | None:
        if value is None:
            return None
        if min(value.top_n, value.patience, value.min_layer) < 0:
            raise ValueError(f"cascade top_n, patience and min_layer must be >= 0, got {value}")
        if value.margin is not None and not value.margin >= 0:
            raise ValueError(f"cascade.margin must be >= 0, got {value.margin}")
        return value

    @field_validator("chunking")
    @classmethod
    def _valid_chunking(cls, value: Chunking | None) -> Chunking | None:
        if value is None:
            return None
        if value.window_tokens < 1:
            raise ValueError(f"chunking.window_tokens must be >= 1, got {value.window_tokens}")
        if not 0 <= value.overlap_tokens < value.window_tokens:
            raise ValueError(
                f"chunking.overlap_tokens must be in [0, window_tokens), got {value.overlap_tokens}"
            )
        return value

    def model_post_init(self, context: Any, /) -> None:
        """Open the (lazily connecting) channel of the sync client."""
        super().model_post_init(context)
        self._client = RerankClient(self.target, **self._channel_args())

    @classmethod
    def class_name(cls) -> str:
        """Name used when serializing the component."""
        return "MatryoshkaPostprocessor"

    def close(self) -> None:
        """Close the sync client's channel (async calls open and close their own)."""
        self._client.close()

    def _channel_args(self) -> dict[str, Any]:
        """Deadline, credentials and call metadata, as both clients take them."""
        credentials = None
        if self.tls or self.root_certificates is not None:
            roots = self.root_certificates.read_bytes() if self.root_certificates is not None else None
            credentials = grpc.ssl_channel_credentials(root_certificates=roots)
        metadata = None
        if self.auth_token is not None:
            metadata = [("authorization", f"Bearer {self.auth_token.get_secret_value()}")]
        return {"timeout": self.timeout, "credentials": credentials, "metadata": metadata}

    def _options(self) -> RerankOptions:
        """The request's re-ranking options."""
        budget = None
        if self.budget is not None or self.budget_flops is not None:
            budget = Budget(max_latency=self.budget, max_flops=self.budget_flops)
        return RerankOptions(
            model=self.model,
            top_n=self.top_n,
            depth=self.depth,
            width=self.width,
            confidence=self.early_exit,
            cascade=self.cascade,
            first_stage_top_n=self.first_stage_top_n,
            budget=budget,
            cache_mode=self.cache_mode,
            chunking=self.chunking,
            min_score=self.min_score,
        )

    def _start(self, nodes: list[NodeWithScore], query: QueryBundle) -> dict[str, Any]:
        """Announce the re-ranking to the instrumentation dispatcher; the RERANKING callback payload."""
        model_name = self.model or "default"
        dispatcher.event(ReRankStartEvent(query=query, nodes=nodes, top_n=self.top_n, model_name=model_name))
        return {
            EventPayload.NODES: nodes,
            EventPayload.MODEL_NAME: model_name,
            EventPayload.QUERY_STR: query.query_str,
            EventPayload.TOP_K: self.top_n,
        }

    def _texts(self, nodes: list[NodeWithScore]) -> list[str]:
        """What the server reads of each node."""
        return [n.node.get_content(metadata_mode=self.metadata_mode) for n in nodes]

    def _documents(self, nodes: list[NodeWithScore], texts: list[str]) -> list[Document]:
        """The nodes' texts, with their retriever scores as first-stage scores when every node has a
        finite one (and `send_retrieval_scores`); otherwise without any."""
        scores = [n.score for n in nodes]
        if self.send_retrieval_scores and all(s is not None and math.isfinite(s) for s in scores):
            return [Document(text, first_stage_score=s) for text, s in zip(texts, scores, strict=True)]
        return [Document(text) for text in texts]

    def _ranked(
        self, nodes: list[NodeWithScore], texts: list[str], result: RerankResult
    ) -> list[NodeWithScore]:
        """The server's ranking (best first) as copies of the nodes, cut to top_n, with exit (and window)
        metadata; announced to the dispatcher as a ReRankEndEvent."""
        ranked = []
        for doc in result.results[: self.top_n]:
            original = nodes[doc.index]
            metadata = {
                **original.node.metadata,
                "exit_layer": doc.exit_layer,
                "exit_reason": doc.exit_reason,
                "partial": result.partial,
            }
            if self.keep_retrieval_score:
                metadata["retrieval_score"] = original.score
            if doc.window is not None:
                w = doc.window
                metadata.update(
                    window_index=w.index,
                    window_count=w.count,
                    window_start=w.start,
                    window_end=w.end,
                    window_text=w.text(texts[doc.index]),
                )
            node = original.node.model_copy(
                update={
                    "metadata": metadata,
                    "excluded_llm_metadata_keys": _with_keys(original.node.excluded_llm_metadata_keys),
                    "excluded_embed_metadata_keys": _with_keys(original.node.excluded_embed_metadata_keys),
                }
            )
            ranked.append(NodeWithScore(node=node, score=doc.score))
        dispatcher.event(ReRankEndEvent(nodes=ranked))
        return ranked

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        """Re-rank `nodes` against the query with the blocking client."""
        query = _required(query_bundle)
        if not nodes:
            return []
        with self.callback_manager.event(CBEventType.RERANKING, payload=self._start(nodes, query)) as event:
            texts = self._texts(nodes)
            documents = self._documents(nodes, texts)
            attempt = 0
            while True:
                attempt += 1
                try:
                    result = self._client.rerank(query.query_str, documents, **self._options())
                    break
                except RerankError as e:
                    delay = retry_delay(e, attempt, self.max_retries, self.retry_backoff)
                    if delay is None:
                        raise describe_failure(e, self.target, attempt, self.timeout) from e
                    time.sleep(delay)
            ranked = self._ranked(nodes, texts, result)
            event.on_end(payload={EventPayload.NODES: ranked})
        return ranked

    async def _apostprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        """Re-rank `nodes` against the query with the grpc.aio client, on the caller's event loop.

        grpc.aio channels belong to the event loop they were made on, so each call opens its own."""
        query = _required(query_bundle)
        if not nodes:
            return []
        with self.callback_manager.event(CBEventType.RERANKING, payload=self._start(nodes, query)) as event:
            texts = self._texts(nodes)
            documents = self._documents(nodes, texts)
            async with AsyncRerankClient(self.target, **self._channel_args()) as client:
                attempt = 0
                while True:
                    attempt += 1
                    try:
                        result = await client.rerank(query.query_str, documents, **self._options())
                        break
                    except RerankError as e:
                        delay = retry_delay(e, attempt, self.max_retries, self.retry_backoff)
                        if delay is None:
                            raise describe_failure(e, self.target, attempt, self.timeout) from e
                        await asyncio.sleep(delay)
            ranked = self._ranked(nodes, texts, result)
            event.on_end(payload={EventPayload.NODES: ranked})
        return ranked


def _with_keys(excluded: list[str]) -> list[str]:
    """`excluded` plus this postprocessor's metadata keys (once each)."""
    return [*excluded, *(k for k in METADATA_KEYS if k not in excluded)]


def _required(query_bundle: QueryBundle | None) -> QueryBundle:
    """The query, which re-ranking cannot do without."""
    if query_bundle is None:
        raise ValueError("MatryoshkaPostprocessor needs the query: pass query_bundle or query_str")
    return query_bundle
