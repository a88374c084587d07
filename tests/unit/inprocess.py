"""A real grpc.aio server in this process (its own event loop on a thread) over a tiny random model."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from matryoshka.engine.reranker import Reranker
from matryoshka.server.app import Running, start
from matryoshka.server.settings import Settings


@contextmanager
def serving(settings: Settings, reranker: Reranker) -> Iterator[Running]:
    """Start the service (app.start, as `matryoshka serve` does) on a background loop; drain on exit."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="grpc-aio-test-server", daemon=True)
    thread.start()
    try:
        running = asyncio.run_coroutine_threadsafe(start(settings, reranker), loop).result(120)
        try:
            yield running
        finally:
            asyncio.run_coroutine_threadsafe(running.drain(0), loop).result(60)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
