"""A small RAG pipeline: BM25 retrieval -> MatryoshkaPostprocessor -> RetrieverQueryEngine (MockLLM).

Indexes the first --docs documents of a BEIR-layout collection (default: cranfield from the repository's
../shared/data), asks --queries of its judged queries, and prints the re-ranked sources with their exit
layers (`*` marks a document the qrels judge relevant). Needs a running server:

    matryoshka serve &    # or: make serve
    python clients/llama-index/examples/rag_pipeline.py --target 127.0.0.1:50051

The data folder comes from --data, else $MATRYOSHKA_DATA, else <repo>/../shared/data.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import defaultdict
from pathlib import Path

from llama_index.core.llms import MockLLM
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import TextNode
from llama_index.retrievers.bm25 import BM25Retriever
from matryoshka_client import ConfidenceExit

from llama_index.postprocessor.matryoshka import MatryoshkaPostprocessor

DEFAULT_DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"


def load_nodes(folder: Path, limit: int) -> list[TextNode]:
    """The first `limit` documents of corpus.jsonl as nodes (id_ = the document id)."""
    nodes = []
    with (folder / "corpus.jsonl").open() as f:
        for line in f:
            doc = json.loads(line)
            if doc["text"].strip():
                nodes.append(TextNode(id_=doc["_id"], text=doc["text"], metadata={"title": doc["title"]}))
            if len(nodes) == limit:
                break
    return nodes


def judged_queries(folder: Path, doc_ids: set[str], count: int) -> list[tuple[str, set[str]]]:
    """The first `count` queries with a relevant document among `doc_ids`, and their relevant ids."""
    relevant: dict[str, set[str]] = defaultdict(set)
    with (folder / "qrels" / "test.tsv").open() as f:
        next(f)  # header
        for line in f:
            qid, did, score = line.split("\t")
            if int(score) > 0 and did in doc_ids:
                relevant[qid].add(did)
    picked = []
    with (folder / "queries.jsonl").open() as f:
        for line in f:
            query = json.loads(line)
            if relevant.get(query["_id"]):
                picked.append((query["text"], relevant[query["_id"]]))
            if len(picked) == count:
                break
    return picked


def main() -> None:
    """Build the pipeline, run the queries, print the re-ranked sources."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("MATRYOSHKA_DATA", DEFAULT_DATA)))
    parser.add_argument("--collection", default="cranfield")
    parser.add_argument("--target", default=os.environ.get("MATRYOSHKA_TARGET", "127.0.0.1:50051"))
    parser.add_argument("--docs", type=int, default=300, help="documents to index")
    parser.add_argument("--queries", type=int, default=2, help="queries to ask")
    parser.add_argument("--candidates", type=int, default=8, help="BM25 candidates to re-rank")
    parser.add_argument("--top-n", type=int, default=3, help="sources kept after re-ranking")
    args = parser.parse_args()

    folder = args.data / args.collection
    nodes = load_nodes(folder, args.docs)
    retriever = BM25Retriever.from_defaults(nodes=nodes, similarity_top_k=args.candidates)
    reranker = MatryoshkaPostprocessor(
        target=args.target,
        top_n=args.top_n,
        early_exit=ConfidenceExit(),  # confident candidates stop early (the server's thresholds)
        keep_retrieval_score=True,
    )
    engine = RetrieverQueryEngine.from_args(
        retriever, llm=MockLLM(max_tokens=8), node_postprocessors=[reranker]
    )

    print(f"{len(nodes)} documents from {folder}; BM25 top {args.candidates} -> matryoshka top {args.top_n}")
    for query, relevant in judged_queries(folder, {n.node_id for n in nodes}, args.queries):
        response = engine.query(query)
        print(f"\nquery: {query}")
        for rank, source in enumerate(response.source_nodes, 1):
            meta = source.node.metadata
            mark = "*" if source.node.node_id in relevant else " "
            print(
                f"  {rank}. {mark} doc {source.node.node_id:>5}  score {source.score:.4f}  "
                f"bm25 {meta['retrieval_score']:.2f}  exit_layer {meta['exit_layer']:>2} "
                f"({meta['exit_reason']})  {meta['title'][:60]}"
            )
    reranker.close()


if __name__ == "__main__":
    main()
