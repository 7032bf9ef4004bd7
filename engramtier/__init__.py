"""engramtier: memory-hierarchy simulator and runtime for Engram conditional-memory tables."""

__version__ = "0.1.0"
