"""The layer-state cache: keys, codecs, the in-process and Redis stores, and the caches the engine and
the server use (docs/architecture.md, "Cache")."""
