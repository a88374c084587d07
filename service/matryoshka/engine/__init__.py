"""The engine: plans, exit policies, cost accounting and the layer-by-layer executor.

Knows the model and the cache protocol; knows nothing of gRPC or any wire format.
"""
