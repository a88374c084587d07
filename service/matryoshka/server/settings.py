"""Service settings from the environment (MATRYOSHKA_*) and command-line flags (pydantic-settings)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import Field, SecretStr, model_validator
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
    dtype: Literal["auto", "bfloat16", "float32", "float16"] = Field(
        "auto", description="auto: bf16 only where a start-up matmul probe finds it faster than fp32"
    )
    scoring: Literal["heads", "query_likelihood", "cosine"] | None = Field(
        None, description="default: by model family (cosine: the split-pair MiniLM bi-encoder)"
    )
    artifact: str | None = Field(None, description="Trained artifact directory (default: the one shipped)")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads")
    max_documents: int = Field(1000, ge=1)
    max_request_bytes: int = Field(4 << 20, ge=1024, description="Serialized request size limit")
    max_document_bytes: int = Field(64 << 10, ge=16, description="Per-document text limit in UTF-8 bytes")
    max_query_bytes: int = Field(8 << 10, ge=16)
    max_query_tokens: int = Field(64, ge=1)
    max_document_tokens: int = Field(512, ge=1)
    default_document_tokens: int = Field(192, ge=1)
    max_windows_per_document: int = Field(64, ge=1, description="Most windows one chunked document runs as")
    max_windows_per_request: int = Field(1000, ge=1, description="Most windows one chunked request runs")
    max_queue: int = Field(64, ge=1, description="Requests waiting or running before RESOURCE_EXHAUSTED")
    retry_after_seconds: float = Field(1.0, gt=0)
    max_batch_rows: int = Field(64, ge=1)
    max_batch_tokens: int = Field(16384, ge=64)
    deadline_margin_seconds: float = Field(
        0.05, ge=0, description="Kept back from a gRPC deadline or a latency budget"
    )
    drain_seconds: float = Field(30.0, ge=0, description="Grace for in-flight calls on SIGTERM")
    tls_cert: Path | None = Field(None, description="PEM certificate chain; with tls_key, serve TLS only")
    tls_key: Path | None = Field(None, description="PEM private key of tls_cert")
    tls_client_ca: Path | None = Field(
        None, description="PEM CA bundle; when set, callers must present a certificate it signed (mTLS)"
    )
    auth_tokens: SecretStr | None = Field(None, description="Accepted bearer tokens, comma-separated")
    auth_token_file: Path | None = Field(None, description="File of accepted bearer tokens, one a line")
    reflection: bool | None = Field(None, description="Serve gRPC reflection (default: only without auth)")
    metrics_host: str = Field("127.0.0.1", description="Address the /metrics endpoint binds")
    access_log: bool = Field(True, description="One structured log line per RPC (logger matryoshka.access)")
    max_step_tokens: int = Field(
        2048, ge=64, description="Padded tokens one engine step advances (bounds a new request's wait)"
    )
    max_inflight_tokens: int = Field(
        262144, ge=1024, description="Input tokens admitted at once (bounds layer-state memory)"
    )
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

    model_dir: str | None = Field(
        None, description="Hugging Face-format re-ranker checkpoint served as `model` (docs/models.md)"
    )
    device: str = Field("cpu", pattern=r"^(cpu|cuda(:\d+)?)$", description="cpu, cuda or cuda:N")

    @model_validator(mode="after")
    def _tls_pairs(self) -> Self:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("set tls_cert and tls_key together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca (mTLS) needs tls_cert and tls_key")
        return self
