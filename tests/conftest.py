"""Fixtures shared across test files: the real Redis server and Redis Cluster (`redis_servers`)."""

pytest_plugins = ["redis_servers"]
