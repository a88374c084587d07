"""`matryoshka minilm-lens`: the split-pair MiniLM artifact (pooled lens + per-layer calibration).

Fits the pooled lens (train/pooled_lens.py) on the sentences of the `--fit` collections, calibrates
every layer on labelled BM25 candidates of `--calibrate`, prints nDCG@10 per layer (raw cosine and
through the lens) on `--select`, and writes the artifact. Pooled states are cached in `--workdir`,
so a rerun (or a run killed part-way) recomputes nothing it already has.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from matryoshka.cli.common import command_line, fail

FitOpt = Annotated[
    list[Path], typer.Option("--fit", help="Collection whose corpus and queries fit the lens.")
]


def minilm_lens_command(
    fit: FitOpt,
    calibrate: Annotated[str, typer.Option(help="DIR:SPLIT whose BM25 candidates calibrate every layer.")],
    select: Annotated[str, typer.Option(help="DIR:SPLIT: per-layer nDCG@10 table (model selection).")],
    out: Annotated[Path, typer.Option(help="Artifact directory to write.")],
    workdir: Annotated[Path, typer.Option(help="Cache of pooled states (resumable).")] = Path("out/minilm"),
    lens_layers: Annotated[str, typer.Option(help="Layers given a pooled lens.")] = "2,3,4,5",
    max_texts: Annotated[int, typer.Option(min=1, help="Fit texts per collection.")] = 2000,
    max_queries: Annotated[int, typer.Option(min=1, help="Queries of --calibrate and --select.")] = 100,
    calibration_depth: Annotated[int, typer.Option(min=2, help="BM25 candidates per query.")] = 20,
    ridge: Annotated[float, typer.Option(min=0.0, help="Ridge of the lens fit.")] = 1e-2,
    max_tokens: Annotated[int, typer.Option(min=8, help="Text tokens per side.")] = 192,
) -> None:
    """Fit, calibrate and select the split-pair MiniLM; write its artifact."""
    import torch

    from matryoshka.data.datasets import DataError, document_text, load_collection
    from matryoshka.data.first_stage import first_stage
    from matryoshka.data.sources import DataSource, refuse_benchmark
    from matryoshka.eval.metrics import evaluate
    from matryoshka.model.artifact import Provenance, save_artifact
    from matryoshka.model.biencoder import CosineScorer
    from matryoshka.model.loading import load_backbone
    from matryoshka.model.matryoshka_model import MatryoshkaModel
    from matryoshka.train.calibrate import calibrate as fit_calibration
    from matryoshka.train.pooled_lens import PooledCache, fit_pooled_lens, install_pooled_lens

    started = time.perf_counter()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    loaded = load_backbone("minilm-l6")
    layers = [int(x) for x in lens_layers.split(",") if x]
    model = MatryoshkaModel.from_hf(
        "minilm-l6",
        loaded.model,
        loaded.tokenizer,
        scoring="cosine",
        fingerprint=loaded.sha256,
        lens_layers=layers,
    )
    scorer = model.scorer
    assert isinstance(scorer, CosineScorer)
    cache = PooledCache(workdir / "pooled", loaded.sha256, max_tokens)

    def log(message: str) -> None:
        typer.echo(f"[{time.perf_counter() - started:7.0f}s] {message}", err=True)

    def states(texts: list[str]) -> Any:
        return cache.get(loaded.model, loaded.tokenizer, texts, log)

    def candidates(spec: str, depth: int) -> tuple[Any, list[str], dict[str, dict[str, float]]]:
        source = DataSource.parse(spec)
        collection = load_collection(source.path)
        qids = collection.query_ids(source.split)[:max_queries]
        run = first_stage(collection, "bm25", source.split, depth)
        return collection, qids, {q: run[q] for q in qids}

    def layer_logits(collection: Any, qids: list[str], run: dict[str, dict[str, float]]) -> dict[int, Any]:
        docs = sorted({d for q in qids for d in run[q]})
        q_states = states([collection.queries[q] for q in qids])
        d_states = states([document_text(collection.corpus[d]) for d in docs])
        slot = {d: i for i, d in enumerate(docs)}
        q_rows = torch.tensor([i for i, q in enumerate(qids) for _ in run[q]], dtype=torch.long)
        d_rows = torch.tensor([slot[d] for q in qids for d in run[q]], dtype=torch.long)
        with torch.no_grad():
            return {
                layer: scorer.pair_logits(layer, q_states[q_rows, layer - 1], d_states[d_rows, layer - 1])
                for layer in scorer.head_layers
            }

    try:
        texts: list[str] = []
        for path in fit:
            collection = load_collection(path)
            refuse_benchmark(collection)
            docs = [document_text(d) for d in collection.corpus.values()][:max_texts]
            texts += docs + list(collection.queries.values())[:max_texts]
        log(f"fit texts: {len(texts)}")
        fits = fit_pooled_lens(states(texts), layers, ridge)
        install_pooled_lens(scorer, fits)
        cal_collection, cal_qids, cal_run = candidates(calibrate, calibration_depth)
        refuse_benchmark(cal_collection)
        qrels = cal_collection.qrels(DataSource.parse(calibrate).split, unknown_docs="keep")
        labels = torch.tensor([float(qrels[q].get(d, 0) > 0) for q in cal_qids for d in cal_run[q]])
        calibration = fit_calibration(
            scorer.calibration, layer_logits(cal_collection, cal_qids, cal_run), labels
        )
        sel_collection, sel_qids, sel_run = candidates(select, 100)
        sel_qrels = sel_collection.qrels(DataSource.parse(select).split, unknown_docs="keep")
        lensed = layer_logits(sel_collection, sel_qids, sel_run)
        saved_lens = {k: v.clone() for k, v in scorer.lens.state_dict().items()}
        hidden = scorer.backbone.hidden_size
        install_pooled_lens(scorer, {layer: (torch.eye(hidden), torch.zeros(hidden)) for layer in layers})
        raw = layer_logits(sel_collection, sel_qids, sel_run)
        scorer.lens.load_state_dict(saved_lens)
    except (DataError, ValueError) as exc:  # unusable data, or calibration labels of one class
        fail(str(exc), cause=exc)
    pairs = [(q, d) for q in sel_qids for d in sel_run[q]]

    def ndcg(scores: Any) -> float:
        run: dict[str, dict[str, float]] = {}
        for (q, d), s in zip(pairs, scores.tolist(), strict=True):
            run.setdefault(q, {})[d] = s
        return evaluate(run, sel_qrels)["ndcg@10"]

    probs = {layer: scorer.calibration.probability(layer, lensed[layer]) for layer in scorer.head_layers}
    grid = [(m, irr) for m in (2, 3, 4) for irr in (0.02, 0.05, 0.1, 0.2)]
    adaptive = []
    for min_layer, irrelevant in grid:
        final, exit_layer = simulate_exits(probs, min_layer, irrelevant, 0.99)
        saved = 1 - float(exit_layer.float().mean()) / scorer.backbone.num_layers
        adaptive.append(
            {"min_layer": min_layer, "irrelevant": irrelevant, "ndcg@10": ndcg(final), "saved": saved}
        )
    table = {
        "adaptive": adaptive,
        "bm25": evaluate(sel_run, sel_qrels)["ndcg@10"],
        "raw": {layer: ndcg(raw[layer]) for layer in scorer.head_layers},
        "lens": {layer: ndcg(lensed[layer]) for layer in scorer.head_layers},
        "calibration": {layer: [f.temperature, f.bias, f.loss_after] for layer, f in calibration.items()},
        "seconds": round(time.perf_counter() - started, 1),
    }
    typer.echo(json.dumps({"select": select, "max_queries": max_queries, **table}, indent=1))
    settings = {"fit": [str(p) for p in fit], "max_texts": max_texts, "ridge": ridge, "calibrate": calibrate}
    model.calibration_version = f"platt-{DataSource.parse(calibrate).path.name}"
    save_artifact(model, out, provenance=Provenance(command_line(), {}, settings, {"select": table}))


def simulate_exits(
    probs: dict[int, Any], min_layer: int, irrelevant: float, relevant: float
) -> tuple[Any, Any]:
    """The confidence exit (engine/exits.py) replayed on per-layer calibrated probabilities: each pair
    stops at the first layer >= `min_layer` where p <= `irrelevant` or p >= `relevant`, else at the last.
    Returns the probability each pair is ranked by and its exit layer."""
    import torch

    layers = sorted(probs)
    final = probs[layers[-1]].clone()
    exit_layer = torch.full_like(final, layers[-1], dtype=torch.long)
    running = torch.ones_like(final, dtype=torch.bool)
    for layer in layers[:-1]:
        if layer < min_layer:
            continue
        stop = running & ((probs[layer] <= irrelevant) | (probs[layer] >= relevant))
        final[stop] = probs[layer][stop]
        exit_layer[stop] = layer
        running &= ~stop
    return final, exit_layer
