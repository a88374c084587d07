"""The model: backbones run layer by layer, per-layer scoring heads, width merging.

Knows torch and transformers; knows nothing of gRPC, Redis or request scheduling.
"""
