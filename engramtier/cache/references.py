"""Policies named where they live: ``"module:attribute"`` references, resolved to builders.

A TOML file may use a policy that no engramtier module imports (docs/custom_policy.md's classes, in
the user's own file): `resolve_reference` imports the module and turns the attribute into a builder
``builder(capacity, ctx, **params)``, the shape `engramtier.cache.policy.register` takes, so that
`make_policy` builds it like any registered policy. Every way a reference can be wrong is one line.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from engramtier.errors import EngramTierError

# the six methods and the arguments each is called with
POLICY_METHODS = {"lookup": ("key", "t"), "admit": ("key", "t"), "remove": ("key",), "contains": ("key",),
                  "occupancy": (), "hit_victim": ()}
_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def is_reference(name: str) -> bool:
    """True for a ``"module:attribute"`` policy reference, False for a registered name."""
    return isinstance(name, str) and ":" in name


def resolve_reference(name: str, search: list[Path]) -> Callable[..., Any]:
    """The builder ``name`` ("module:attribute") refers to; ``search``: directories tried after sys.path."""
    module_name, _, attribute = name.partition(":")
    if not (_DOTTED.fullmatch(module_name) and _DOTTED.fullmatch(attribute)):
        raise EngramTierError("a policy reference is 'module:attribute', e.g. 'my_policies:LRU2' for class LRU2 "
                              "in my_policies.py")
    module = _import(module_name, search)
    obj = module
    for part in attribute.split("."):
        if not hasattr(obj, part):
            public = {n.lower(): n for n in dir(obj) if not n.startswith("_")}  # a case slip is the usual typo
            close = difflib.get_close_matches(part.lower(), public, n=1)
            hint = f"did you mean '{public[close[0]]}'?" if close else "check the name after the colon"
            raise EngramTierError(f"module '{module_name}' ({getattr(module, '__file__', None) or 'no file'}) has no "
                                  f"attribute '{attribute}'; {hint}")
        obj = getattr(obj, part)
    if inspect.isclass(obj):
        refuse_non_policy(obj, f"class {attribute}")
        return _class_builder(obj, attribute)
    if not callable(obj):
        raise EngramTierError(f"{attribute} is an object of type {type(obj).__name__}, not a policy class or a "
                              "builder function builder(capacity, ctx, **params)")
    return obj


def _import(module_name: str, search: list[Path]) -> Any:
    """The module, from sys.path or else from ``search``, which is on sys.path only while importing."""
    extra = [str(d) for d in search if str(d) not in sys.path]
    for added in ([], extra) if extra else ([],):
        sys.path.extend(added)
        try:
            importlib.invalidate_caches()
            return importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if not (err.name and (module_name == err.name or module_name.startswith(err.name + "."))):
                raise EngramTierError(f"importing module '{module_name}' failed: {err}") from None
        except (Exception, SystemExit) as err:  # the user's module failing in any way (sys.exit too): one line
            raise EngramTierError(f"importing module '{module_name}' failed: {_cause(err)}") from None
        finally:
            for directory in added:
                sys.path.remove(directory)
    places = " nor in " + ", ".join(map(str, search)) + " (the TOML file's directory)" if search else ""
    raise EngramTierError(f"no module '{module_name}' on the Python path{places}; add its directory to PYTHONPATH "
                          "or put the module beside the TOML file")


@contextmanager
def user_code(what: str) -> Iterator[None]:
    """Run code of a user's policy (building it, calling its methods): whatever it raises, ``sys.exit()``
    included, becomes one line saying that ``what`` failed and why; an `EngramTierError` keeps its line."""
    try:
        yield
    except EngramTierError:
        raise
    except (Exception, SystemExit) as err:
        raise EngramTierError(f"{what} failed: {_cause(err)}") from None


def _cause(err: BaseException) -> str:
    return f"it called sys.exit({err.code!r})" if isinstance(err, SystemExit) else f"{type(err).__name__}: {err}"


def _class_builder(cls: type, attribute: str) -> Callable[..., Any]:
    """``builder(capacity, ctx, **params)`` for a policy class, with a signature naming its parameters
    (`make_policy` checks a tier's params against it)."""
    try:
        parameters = list(inspect.signature(cls).parameters.values())
    except (TypeError, ValueError):
        parameters = []
    if not parameters or parameters[0].kind not in (parameters[0].POSITIONAL_ONLY, parameters[0].POSITIONAL_OR_KEYWORD):
        raise EngramTierError(f"class {attribute} cannot be built: its constructor must take the capacity (rows) first")
    takes_ctx = len(parameters) > 1 and parameters[1].name == "ctx"
    rest = parameters[2 if takes_ctx else 1:]

    def build(capacity, ctx, **params):
        return cls(capacity, ctx, **params) if takes_ctx else cls(capacity, **params)

    head = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in ("capacity", "ctx")]
    build.__signature__ = inspect.Signature(head + [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in rest
                                                    if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)])
    return build


def refuse_non_policy(cls: type, what: str) -> None:
    """Refuse ``cls`` unless it has the six policy methods, each taking its arguments; ``what`` names it in the
    error."""
    missing = [m for m in POLICY_METHODS if not callable(getattr(cls, m, None))]
    if missing:
        raise EngramTierError(f"{what} is not a policy: it lacks {', '.join(missing)} (a policy has the six "
                              "methods of docs/custom_policy.md)")
    for method, arguments in POLICY_METHODS.items():
        member = getattr(cls, method)
        try:
            signature = inspect.signature(member)
        except (TypeError, ValueError):  # a builtin or compiled method without a signature: not checkable
            continue
        unbound = inspect.isfunction(member) and not isinstance(inspect.getattr_static(cls, method), staticmethod)
        try:
            signature.bind(*((None,) if unbound else ()), *arguments)  # a plain method takes self first
        except TypeError:
            raise EngramTierError(f"{what} is not a policy: {method}{signature} cannot be called as "
                                  f"{method}({', '.join(arguments)}) (docs/custom_policy.md)") from None
