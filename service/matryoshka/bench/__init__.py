"""Benchmarks that print figures and side-by-side ratios (never timed unit tests)."""
