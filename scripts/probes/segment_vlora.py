"""Pilot of issue #17's lever 3, segment-wise V-LoRA on the CPU (results: docs/results.md, "Segment-wise
V-LoRA, a pilot"). Not part of the service: it measures whether the lever pays before it becomes a
training module.

SmolLM2 with its shipped artifact. The frozen backbone runs once over BM25 candidates of scifact train
(queries 30.., the first 30 are recorded elsewhere) and keeps each group's state at layer K and the last
layer's residuals at the query-predicting positions. V-LoRA (rank 8, q/k/v/o) on layers K+1..D and the
lens translator at D are then trained so that the read-out at D matches the full model's next-token
distribution there (KL over the teacher's top-32 tokens plus the targets): no labels, backprop through
D-K layers only. Held-out scifact test and cranfield (first 30 judged queries, BM25 top-30) are scored at
depth D and at full depth with the adapters off and on.

    .venv/bin/python scripts/probes/segment_vlora.py --k 15 --d 20
"""

from __future__ import annotations

import argparse
import random
import time

import ir_measures
import torch

from matryoshka.data.datasets import Collection, document_text, load_collection
from matryoshka.data.first_stage import first_stage
from matryoshka.engine.reranker import Reranker
from matryoshka.model.compensation import Compensation, CompensationConfig
from matryoshka.model.heads import query_positions
from matryoshka.model.prompt import Truncation
from matryoshka.model.state import LayerState
from matryoshka.train.lens import support_kl, teacher_support
from matryoshka.train.structures import backbone_autocast

Group = tuple[str, str, list[str]]


def groups(path: str, split: str, queries: int, k: int, skip: int = 0) -> tuple[Collection, list[Group]]:
    """(qid, query, BM25 top-k doc ids) for `queries` judged queries after the first `skip`."""
    c = load_collection(path)
    run = first_stage(c, "bm25", split, k)
    qids = list(run)[skip : skip + queries]
    return c, [(q, c.queries[q], sorted(run[q], key=lambda d: -run[q][d])[:k]) for q in qids]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=15, help="cached layer (frozen below)")
    ap.add_argument("--d", type=int, default=20, help="exit layer whose read-out is trained")
    ap.add_argument("--queries", type=int, default=100, help="training queries (8 candidates each)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-3, help="V-LoRA learning rate (lens: 1e-3)")
    ap.add_argument("--eval-queries", type=int, default=30)
    args = ap.parse_args()
    torch.manual_seed(0)
    random.seed(0)
    model = Reranker.load("smollm2-135m").model
    bb, scorer, last = model.backbone, model.scorer, model.backbone.num_layers
    trunc = Truncation()

    def prefix(query: str, texts: list[str]) -> LayerState:
        s = model.embed(model.encode(query, texts, trunc))
        for layer in range(1, args.k + 1):
            s = bb.forward_layer(layer, s)
        return s

    comp = bb.compensation or Compensation(bb, CompensationConfig(rank=8, ratios=()))
    trained = range(args.k + 1, args.d + 1)
    for adapter in comp.adapters():
        adapter.use_v = adapter.use_h = False
    params = [p for layer in trained for a in comp.adapters(layer) for p in (a.v_a, a.v_b)]
    lens_params = list(scorer.lens.translators[str(args.d)].parameters())

    def adapters(on: bool) -> None:
        for layer in trained:
            for a in comp.adapters(layer):
                a.use_v = on

    started = time.time()
    c, train = groups("../shared/data/scifact", "train", args.queries, 8, skip=30)
    cache = []
    with torch.no_grad(), backbone_autocast(model, True):
        for _, q, docs in train:
            s = prefix(q, [document_text(c.corpus[d]) for d in docs])
            at = query_positions(s)
            t = s
            for layer in range(args.k + 1, last + 1):
                t = bb.forward_layer(layer, t)
            cache.append((s, at, t.hidden[at.predicts].float()))
    print(f"collected {len(cache)} groups in {time.time() - started:.0f} s", flush=True)

    for p in params + lens_params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(
        [{"params": params, "lr": args.lr}, {"params": lens_params, "lr": 1e-3}], weight_decay=0.0
    )
    adapters(True)
    for epoch in range(args.epochs):
        random.shuffle(cache)
        total, started = 0.0, time.time()
        for s, at, teacher_hidden in cache:
            support, teacher = teacher_support(scorer, teacher_hidden, at.targets, 32)
            with backbone_autocast(model, True):
                x = s
                for layer in trained:
                    x = bb.forward_layer(layer, x)
                h = scorer.lens(args.d, x.hidden[at.predicts].float())
            loss = support_kl(scorer, h, support, teacher)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
        print(f"epoch {epoch + 1}: KL {total / len(cache):.4f} ({time.time() - started:.0f} s)", flush=True)
    for p in params + lens_params:
        p.requires_grad_(False)

    for path in ("../shared/data/scifact", "../shared/data/cranfield"):
        c, held_out = groups(path, "test", args.eval_queries, 30)
        runs: dict[str, dict[str, dict[str, float]]] = {}
        with torch.no_grad(), backbone_autocast(model, True):
            for qid, q, docs in held_out:
                s = prefix(q, [document_text(c.corpus[d]) for d in docs])
                for on in (False, True):
                    adapters(on)
                    x = s
                    for layer in range(args.k + 1, last + 1):
                        x = bb.forward_layer(layer, x)
                        if layer in (args.d, last):
                            name = f"depth {layer}, adapters {'on' if on else 'off'}"
                            runs.setdefault(name, {})[qid] = dict(
                                zip(docs, scorer.logits(x).tolist(), strict=True)
                            )
        adapters(False)
        judged = c.qrels("test")
        for name, run in runs.items():  # averaged over the scored queries only
            qrels = [ir_measures.Qrel(q, d, int(v)) for q in run for d, v in judged[q].items()]
            scored = [ir_measures.ScoredDoc(q, d, s) for q, dd in run.items() for d, s in dd.items()]
            ndcg = ir_measures.calc_aggregate([ir_measures.nDCG @ 10], qrels, scored)[ir_measures.nDCG @ 10]
            print(f"{path} {name}: nDCG@10 {ndcg:.4f}", flush=True)


if __name__ == "__main__":
    main()
