"""Built-in policies, one per module; importing a module registers it (see engramtier.cache.policy)."""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
