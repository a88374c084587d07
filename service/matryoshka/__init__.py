"""matryoshka-rerank: an adaptive early-exit re-ranker with runtime depth and width."""

__version__ = "0.1.0"
