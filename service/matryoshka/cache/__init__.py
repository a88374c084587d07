"""Layer-state caching: the codec for row states (stores come with the service)."""
