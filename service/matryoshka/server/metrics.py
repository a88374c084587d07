"""Prometheus metrics for the service (served on their own HTTP port)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from matryoshka.engine.scheduler import BatchStats


class Metrics:
    """The service's instruments, in a registry of their own (tests can build many); all but the cache
    store's errors are labelled by the served model."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "matryoshka_requests",
            "RPCs by method, status code and model",
            ["method", "code", "model"],
            registry=r,
        )
        self.latency = Histogram(
            "matryoshka_request_seconds",
            "RPC latency",
            ["method", "model"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.exit_layer = Histogram(
            "matryoshka_exit_layer",
            "Layer each document exited at",
            ["model"],
            buckets=tuple(range(1, 65)),
            registry=r,
        )
        self.flops_saved = Histogram(
            "matryoshka_flops_saved_ratio",
            "Share of full-depth FLOPs a request did not spend",
            ["model"],
            buckets=(0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
            registry=r,
        )
        self.documents = Counter("matryoshka_documents", "Documents re-ranked", ["model"], registry=r)
        self.queue_size = Gauge("matryoshka_queue_size", "Requests waiting or running", ["model"], registry=r)
        self.cache_documents = Counter(
            "matryoshka_cache_documents",
            "Documents by cache outcome (hit, resumed, miss)",
            ["result", "model"],
            registry=r,
        )
        self.cache_errors = Counter(
            "matryoshka_cache_errors", "Cache store failures and timeouts (then bypassed)", ["op"], registry=r
        )
        self.cache_writes_dropped = Counter(
            "matryoshka_cache_writes_dropped", "Write-backs dropped: too many pending", ["model"], registry=r
        )
        self.queue_wait = Histogram(
            "matryoshka_queue_wait_seconds",
            "Time a request waited for its first engine step",
            ["model"],
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.batch_requests = Histogram(
            "matryoshka_batch_requests",
            "Requests per engine step",
            ["model"],
            buckets=(1, 2, 4, 8, 16, 32),
            registry=r,
        )
        self.batch_documents = Histogram(
            "matryoshka_batch_documents",
            "Documents per engine step",
            ["model"],
            buckets=(1, 4, 16, 64, 256, 1024, 4096),
            registry=r,
        )

    def observe_batch(self, stats: BatchStats, model: str) -> None:
        """A scheduler's hook: batch size and each request's queue wait, for the model it serves."""
        self.batch_requests.labels(model=model).observe(stats.num_jobs)
        self.batch_documents.labels(model=model).observe(stats.num_documents)
        for wait in stats.queue_waits:
            self.queue_wait.labels(model=model).observe(wait)

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Expose /metrics over HTTP; returns the bound port."""
        server, _ = start_http_server(port, addr=host, registry=self.registry)
        return int(server.server_port)
