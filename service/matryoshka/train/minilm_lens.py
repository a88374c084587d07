"""The split-pair MiniLM recipe: fit the pooled lens (train/pooled_lens.py) on the sentences of some
collections, calibrate every layer on labelled BM25 candidates, score a selection split per layer, and
write the artifact. Pooled states are cached in the work directory, so a rerun (or a run killed
part-way) recomputes nothing it already has. Selecting among layers and exits is evaluation's job
(eval/layer_selection.py); this module only produces the per-layer logits it needs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from matryoshka.data.datasets import Collection, Qrels, Run, document_text, load_collection
from matryoshka.data.first_stage import first_stage
from matryoshka.data.sources import DataSource, refuse_benchmark
from matryoshka.model import loading
from matryoshka.model.artifact import Provenance, save_artifact
from matryoshka.model.biencoder import CosineScorer
from matryoshka.model.matryoshka_model import MatryoshkaModel
from matryoshka.train.calibrate import LayerFit, calibrate
from matryoshka.train.pooled_lens import PooledCache, fit_pooled_lens, install_pooled_lens

Log = Callable[[str], None]


@dataclass
class SplitPairFit:
    """The fitted model and what selection needs: per-layer logits (through the lens and raw) and
    calibrated probabilities of the selection split's (query, document) pairs, in `pairs` order."""

    model: MatryoshkaModel
    calibration: dict[int, LayerFit]
    pairs: list[tuple[str, str]]
    run: Run  # the selection split's BM25 candidates
    qrels: Qrels
    lensed: dict[int, Tensor]
    raw: dict[int, Tensor]
    probabilities: dict[int, Tensor]


def fit_split_pair(
    fit: Sequence[Path],
    calibrate_on: str,
    select_on: str,
    workdir: Path,
    *,
    lens_layers: Sequence[int],
    max_texts: int,
    max_queries: int,
    calibration_depth: int,
    ridge: float,
    max_tokens: int,
    log: Log,
) -> SplitPairFit:
    """Fit, calibrate and score the selection split; raises DataError or ValueError for unusable data."""
    loaded = loading.load_backbone("minilm-l6")
    layers = list(lens_layers)
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

    def states(texts: list[str]) -> Any:
        return cache.get(loaded.model, loaded.tokenizer, texts, log)

    def candidates(spec: str, depth: int) -> tuple[Collection, list[str], Run, Qrels]:
        source = DataSource.parse(spec)
        collection = load_collection(source.path)
        qids = collection.query_ids(source.split)[:max_queries]
        run = first_stage(collection, "bm25", source.split, depth)
        qrels = collection.qrels(source.split, unknown_docs="keep")
        return collection, qids, {q: run[q] for q in qids}, qrels

    def layer_logits(collection: Collection, qids: list[str], run: Run) -> dict[int, Tensor]:
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

    texts: list[str] = []
    for path in fit:
        collection = load_collection(path)
        refuse_benchmark(collection)
        docs = [document_text(d) for d in collection.corpus.values()][:max_texts]
        texts += docs + list(collection.queries.values())[:max_texts]
    log(f"fit texts: {len(texts)}")
    install_pooled_lens(scorer, fit_pooled_lens(states(texts), layers, ridge))
    cal_collection, cal_qids, cal_run, cal_qrels = candidates(calibrate_on, calibration_depth)
    refuse_benchmark(cal_collection)
    labels = torch.tensor([float(cal_qrels[q].get(d, 0) > 0) for q in cal_qids for d in cal_run[q]])
    fits = calibrate(scorer.calibration, layer_logits(cal_collection, cal_qids, cal_run), labels)
    model.calibration_version = f"platt-{DataSource.parse(calibrate_on).path.name}"
    sel_collection, sel_qids, sel_run, sel_qrels = candidates(select_on, 100)
    lensed = layer_logits(sel_collection, sel_qids, sel_run)
    saved_lens = {k: v.clone() for k, v in scorer.lens.state_dict().items()}
    hidden = scorer.backbone.hidden_size
    install_pooled_lens(scorer, {layer: (torch.eye(hidden), torch.zeros(hidden)) for layer in layers})
    raw = layer_logits(sel_collection, sel_qids, sel_run)
    scorer.lens.load_state_dict(saved_lens)
    probabilities = {
        layer: scorer.calibration.probability(layer, lensed[layer]) for layer in scorer.head_layers
    }
    pairs = [(q, d) for q in sel_qids for d in sel_run[q]]
    return SplitPairFit(model, fits, pairs, sel_run, sel_qrels, lensed, raw, probabilities)


def save_split_pair(
    result: SplitPairFit, out: Path, *, command: str, settings: dict[str, Any], metrics: dict[str, Any]
) -> None:
    """Write the fitted model as an artifact with its provenance."""
    save_artifact(result.model, out, provenance=Provenance(command, {}, settings, metrics))
