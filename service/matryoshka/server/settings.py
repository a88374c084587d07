"""Service settings from the environment (MATRYOSHKA_*) and command-line flags (pydantic-settings)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything an operator can tune; each field is also `MATRYOSHKA_<NAME>` in the environment."""

    model_config = SettingsConfigDict(env_prefix="MATRYOSHKA_", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(50051, ge=0, le=65535, description="gRPC port (0 = pick a free one)")
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="Prometheus /metrics port; off if unset"
    )
    model: str = Field("smollm2-135m", description="Backbone served as the default model")
    dtype: Literal["bfloat16", "float32"] = "bfloat16"
    scoring: Literal["heads", "query_likelihood"] | None = Field(None, description="default: by model family")
    artifact: str | None = Field(None, description="Trained artifact directory (default: the one shipped)")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads")
    max_documents: int = Field(1000, ge=1)
    max_request_bytes: int = Field(4 << 20, ge=1024, description="Serialized request size limit")
    max_document_bytes: int = Field(64 << 10, ge=16, description="Per-document text limit in UTF-8 bytes")
    max_query_bytes: int = Field(8 << 10, ge=16)
    max_query_tokens: int = Field(64, ge=1)
    max_document_tokens: int = Field(512, ge=1)
    default_document_tokens: int = Field(192, ge=1)
    max_queue: int = Field(64, ge=1, description="Requests waiting or running before RESOURCE_EXHAUSTED")
    retry_after_seconds: float = Field(1.0, gt=0)
    max_batch_rows: int = Field(64, ge=1)
    max_batch_tokens: int = Field(16384, ge=64)
    deadline_margin_seconds: float = Field(0.05, ge=0, description="Kept back from a gRPC deadline")
    drain_seconds: float = Field(30.0, ge=0, description="Grace for in-flight calls on SIGTERM")
    # -- the layer-state cache (docs/architecture.md "Cache") --
    cache_url: str | None = Field(
        None, description="redis:// or rediss:// URL of a shared cache; unset = in-process memory; 'off'"
    )
    cache_memory_bytes: int = Field(512 << 20, ge=1 << 20, description="In-process cache budget")
    cache_ttl_seconds: int = Field(86400, ge=1, description="Redis entry lifetime")
    cache_max_entry_bytes: int = Field(8 << 20, ge=1024, description="Larger states are not cached")
    cache_timeout_seconds: float = Field(0.05, gt=0, description="Redis call timeout (then bypass)")
    cache_retry_seconds: float = Field(2.0, gt=0, description="Bypass this long after a Redis failure")
    cache_state_dtype: Literal["model", "float32", "bfloat16", "float16"] = Field(
        "model", description="dtype hidden states are stored in (bfloat16/float16 halve the bytes)"
    )
