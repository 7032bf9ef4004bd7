"""Built-in policies, one per module; importing a module registers it (see engramtier.cache.policy)."""

from engramtier.cache.policies import lru  # noqa: F401
