"""The one direction data flows (docs/design.md): a subpackage imports only those before it, and the
top-level helpers (errors, outputs, run directories, memory, documents) import no subpackage, so that any part can use them."""

import ast
from pathlib import Path

import engramtier

ORDER = ["model", "trace", "cache", "tiers", "analysis", "serve"]  # each may import those before it
PACKAGE = Path(engramtier.__file__).parent
ENTRY_POINTS = {"cli.py", "__init__.py", "__main__.py"}  # the command line registers every package's commands


def _imported_layers(path: Path):
    """(line, module) of every engramtier import in ``path``, function-level ones included."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "engramtier" and len(parts) > 1 and parts[1] in ORDER:
                yield node.lineno, name, parts[1]


def test_every_import_flows_downstream():
    upstream = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).parts
        own = parts[0] if len(parts) > 1 else None
        for line, name, layer in _imported_layers(path):
            if own is None and path.name not in ENTRY_POINTS:
                upstream.append(f"{path.name}:{line} imports {name} (a top-level helper imports no subpackage)")
            elif own in ORDER and ORDER.index(layer) > ORDER.index(own):
                upstream.append(f"{'/'.join(parts)}:{line} imports {name} ({own}/ comes before {layer}/)")
    assert upstream == []


def test_the_rule_sees_an_upstream_import(tmp_path):
    """The scan itself finds a function-level import that breaks the rule (so the test above can fail)."""
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from engramtier.analysis.plots import save_figure\n", encoding="utf-8")
    assert [(line, layer) for line, _, layer in _imported_layers(source)] == [(2, "analysis")]
