"""The gRPC service: validates and translates requests, maps errors to statuses; runs no torch itself."""
