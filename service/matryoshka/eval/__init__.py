"""Evaluation harness: BEIR-format collections, TREC runs, BM25 first stage and ir_measures metrics."""
