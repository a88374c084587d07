"""The generated messages and gRPC stubs of `matryoshka.v1`: the one generated copy, shared by the client
and the server (`from matryoshka_client.proto import rerank_service_pb2 as pb`).

Regenerate with `python clients/python/generate.py` after editing proto/.
"""

from matryoshka_client._proto.matryoshka.v1 import rerank_service_pb2, rerank_service_pb2_grpc

__all__ = ["rerank_service_pb2", "rerank_service_pb2_grpc"]
