"""The data layer shared by training and evaluation: BEIR-format collections, TREC runs, the BM25
first stage, `DataSource` specs and the guard that keeps the benchmark out of training."""
