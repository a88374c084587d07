"""Supervised tuning of the MiniLM's last layers on labelled training queries (issue #16; results:
docs/results.md, "Supervised tuning"). Not part of the service: it measures whether the labels of the
training collections can lift the bi-encoder's full plan on collections it was not tuned on, before a
training command is built for it.

The student is all-MiniLM-L6-v2 with only its last `--layers` trainable (mean-pooled, unit sides, as the
split-pair model scores). Each training group is a labelled query of `--train` (e.g. scifact:train), one
judged-relevant passage and 7 BM25 negatives from its top 30; the loss is InfoNCE over the group
(temperature 0.05) plus `--kl` times the KL from the frozen model's distribution over the same group,
which keeps what the model knew. Evaluation: the first `--queries` judged queries of scifact test (in
domain) and cranfield, cacm, nfcorpus-dev (out of domain), BM25 top-30, cosine alone and fused as the full
plan serves it (0.7 z-cosine + 0.3 z-BM25), frozen against tuned.

    .venv/bin/python scripts/probes/supervised_tuning.py --layers 4,5 --steps 300
"""

from __future__ import annotations

import argparse
import copy
import random
import time
from pathlib import Path
from typing import Any

import ir_measures
import torch
import torch.nn.functional as F
from fused_table import COLLECTIONS, ndcg10, print_table, zscores

from matryoshka.data.datasets import document_text, load_collection
from matryoshka.data.first_stage import first_stage
from matryoshka.engine.dtype import choose_dtype
from matryoshka.model.loading import load_backbone

PASSAGE_TOKENS, QUERY_TOKENS, NEGATIVES, TEMPERATURE = 192, 64, 7, 0.05


def embed(model: torch.nn.Module, tokenizer: Any, texts: list[str], limit: int, bf16: bool) -> torch.Tensor:
    """Unit mean-pooled last-layer embeddings, as the split-pair model's last head reads them."""
    batch = tokenizer(texts, truncation=True, max_length=limit, padding=True, return_tensors="pt")
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        states = model(**batch).last_hidden_state.float()
    mask = batch["attention_mask"][..., None].float()
    return F.normalize((states * mask).sum(1) / mask.sum(1), dim=-1)


def groups(data: Path, source: str, rng: random.Random) -> list[tuple[str, str, list[str]]]:
    """(query, positive passage, BM25 negatives) for every judged query of `name:split` with a positive."""
    name, split = source.split(":")
    collection = load_collection(data / name)
    qrels = collection.qrels(split)
    run = first_stage(collection, "bm25", split, 30)
    found = []
    for qid, judged in qrels.items():
        positives = [d for d, r in judged.items() if r > 0]
        negatives = [d for d in run.get(qid, {}) if judged.get(d, 0) <= 0]
        if positives and len(negatives) >= NEGATIVES:
            texts = [document_text(collection.corpus[d]) for d in rng.sample(negatives, NEGATIVES)]
            found.append((collection.queries[qid], document_text(collection.corpus[positives[0]]), texts))
    return found


def train(args: argparse.Namespace, bf16: bool) -> tuple[torch.nn.Module, torch.nn.Module, Any]:
    """The frozen model, the tuned student and the tokenizer."""
    loaded = load_backbone("minilm-l6")
    frozen, tokenizer = loaded.model, loaded.tokenizer
    student = copy.deepcopy(frozen).train()
    layers = {int(x) for x in args.layers.split(",")}
    for name, parameter in student.named_parameters():
        parameter.requires_grad = any(name.startswith(f"encoder.layer.{k}.") for k in layers)
    trainable = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.lr)
    rng = random.Random(0)
    data = [g for source in args.train.split("+") for g in groups(args.data, source, rng)]
    print(f"{len(data)} groups, {sum(p.numel() for p in trainable)} trainable parameters", flush=True)
    started = time.perf_counter()
    for step in range(1, args.steps + 1):
        batch = rng.sample(data, args.batch)
        queries = [q for q, _, _ in batch]
        passages = [p for _, positive, negatives in batch for p in [positive, *negatives]]
        with torch.no_grad():
            teacher = _group_logits(frozen, tokenizer, queries, passages, bf16)
        logits = _group_logits(student, tokenizer, queries, passages, bf16)
        ce = F.cross_entropy(logits, torch.zeros(len(batch), dtype=torch.long))
        kl = F.kl_div(logits.log_softmax(-1), teacher.log_softmax(-1), log_target=True, reduction="batchmean")
        loss = ce + args.kl * kl
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 25 == 0:
            elapsed = time.perf_counter() - started
            print(
                f"step {step}: ce {ce.item():.3f} kl {kl.item():.4f} ({elapsed / step:.2f} s/step)",
                flush=True,
            )
    return frozen, student.eval(), tokenizer


def _group_logits(
    model: torch.nn.Module, tokenizer: Any, queries: list[str], passages: list[str], bf16: bool
) -> torch.Tensor:
    """[groups, 1 + negatives] cosines over the temperature."""
    q = embed(model, tokenizer, queries, QUERY_TOKENS, bf16)
    p = embed(model, tokenizer, passages, PASSAGE_TOKENS, bf16).view(len(queries), NEGATIVES + 1, -1)
    return torch.einsum("gh,gnh->gn", q, p) / TEMPERATURE


@torch.inference_mode()
def evaluate(
    models: dict[str, torch.nn.Module], tokenizer: Any, data: Path, queries: int, bf16: bool
) -> None:
    """Print nDCG@10 of each model's cosine, alone and fused with BM25, per collection and the mean."""
    rows: dict[str, list[float]] = {}
    for name, split in COLLECTIONS:
        collection = load_collection(data / name)
        qrels, run = collection.qrels(split), first_stage(collection, "bm25", split, 30)
        kept = [q for q in run if run[q]][:queries]
        runs: dict[str, list[ir_measures.ScoredDoc]] = {}
        for qid in kept:
            docs = list(run[qid])
            bm25 = zscores([run[qid][d] for d in docs])
            texts = [document_text(collection.corpus[d]) for d in docs]
            for label, model in models.items():
                q = embed(model, tokenizer, [collection.queries[qid]], QUERY_TOKENS, bf16)
                cos = zscores((embed(model, tokenizer, texts, PASSAGE_TOKENS, bf16) @ q[0]).tolist())
                for j, d in enumerate(docs):
                    runs.setdefault(f"{label} cos", []).append(ir_measures.ScoredDoc(qid, d, cos[j]))
                    fused = 0.7 * cos[j] + 0.3 * bm25[j]
                    runs.setdefault(f"{label} fused", []).append(ir_measures.ScoredDoc(qid, d, fused))
        for label, scored in runs.items():
            rows.setdefault(label, []).append(ndcg10(qrels, scored))
    print_table(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--train", default="scifact:train", help="sources joined by '+', name:split")
    parser.add_argument("--layers", default="4,5", help="0-based encoder layers to train")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=8, help="groups per step")
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--kl", type=float, default=1.0, help="weight of the KL to the frozen model")
    parser.add_argument("--queries", type=int, default=100)
    args = parser.parse_args()
    torch.manual_seed(0)
    bf16 = choose_dtype("auto", "cpu").name == "bfloat16"
    frozen, student, tokenizer = train(args, bf16)
    evaluate({"frozen": frozen, "tuned": student}, tokenizer, args.data, args.queries, bf16)


if __name__ == "__main__":
    main()
