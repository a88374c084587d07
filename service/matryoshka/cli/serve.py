"""`matryoshka serve`: the gRPC service (settings from flags and MATRYOSHKA_* variables)."""

from __future__ import annotations

from typing import Annotated

import typer


def serve(
    port: Annotated[int | None, typer.Option(help="gRPC port (0 = any free port).")] = None,
    host: Annotated[str | None, typer.Option(help="Address to bind.")] = None,
    metrics_port: Annotated[int | None, typer.Option(help="Prometheus /metrics port.")] = None,
    model: Annotated[str | None, typer.Option(help="Backbone to serve.")] = None,
    dtype: Annotated[str | None, typer.Option(help="bfloat16 or float32.")] = None,
    artifact: Annotated[
        str | None, typer.Option(help="Trained artifact dir (default: the shipped one).")
    ] = None,
    model_dir: Annotated[
        str | None, typer.Option(help="Hugging Face-format re-ranker checkpoint dir (docs/models.md).")
    ] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda or cuda:N.")] = None,
    models: Annotated[
        list[str] | None,
        typer.Option(
            "--models",
            help="Another model by name, NAME=SOURCE[,scoring=S][,artifact=PATH]; repeat for more. SOURCE: "
            "a packaged backbone or a checkpoint directory (a path). Without --model/--model-dir the "
            "first is the default.",
        ),
    ] = None,
) -> None:
    """Serve matryoshka.v1.RerankService (settings also from MATRYOSHKA_* environment variables)."""
    import asyncio
    import logging

    from pydantic import ValidationError

    from matryoshka.cli.common import fail
    from matryoshka.server.app import serve as run_server
    from matryoshka.server.model_specs import ModelSpecError
    from matryoshka.server.settings import Settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    flags = {
        "port": port,
        "host": host,
        "metrics_port": metrics_port,
        "model": model,
        "dtype": dtype,
        "artifact": artifact,
        "model_dir": model_dir,
        "device": device,
        "models": models or None,
    }
    try:
        settings = Settings.model_validate({k: v for k, v in flags.items() if v is not None})
    except ValidationError as exc:
        fail(f"bad settings: {exc}", cause=exc)
    try:
        asyncio.run(run_server(settings))
    except ModelSpecError as exc:
        fail(str(exc), cause=exc)
