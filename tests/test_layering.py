"""The package's layering: each module imports only its own layer or the layers below, with no cycles.

Imports are read from the source (ast), function-local ones included, so a lazy import
cannot hide a cycle or an import that goes up the layering.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "leccr_cli"

# top first, one prefix per subpackage; a module belongs to the first layer whose prefix matches its name
LAYERS = [
    ("cli", ("leccr_cli.cli", "leccr_cli.__main__", "leccr_cli.testing")),
    ("app", ("leccr_cli.app",)),
    ("api", ()),  # leccr_cli/__init__.py: the public names, imported lazily from the layers below
    ("training", ("leccr_cli.training",)),
    ("retrieval", ("leccr_cli.retrieval",)),
    ("prep", ("leccr_cli.prep",)),
    ("runs", ("leccr_cli.runs",)),
    ("data", ("leccr_cli.data",)),
    ("model", ("leccr_cli.model",)),
    ("corpus", ("leccr_cli.corpus",)),
    ("base", ("leccr_cli.config", "leccr_cli.defaults", "leccr_cli.errors", "leccr_cli.utils")),
]
API = [name for name, _ in LAYERS].index("api")


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The leccr_cli modules `name` imports anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                targets.add(submodule if submodule in modules else base)
    return {t for t in targets if t in modules and t != name}


def _layer(name: str) -> int:
    if name == "leccr_cli":
        return API
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            return index
    raise AssertionError(f"{name} belongs to no layer: add it to LAYERS in {__file__}")


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_every_module_has_a_layer():
    for name in _modules():
        _layer(name)


def test_no_module_imports_a_higher_layer():
    upward = []
    for name, targets in _graph().items():
        for target in targets:
            if _layer(target) < _layer(name):
                upward.append(f"{name} ({LAYERS[_layer(name)][0]}) imports {target} ({LAYERS[_layer(target)][0]})")
    assert not upward, "imports that go up the layering:\n" + "\n".join(sorted(upward))


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []
    cycles = []

    def visit(name: str) -> None:
        state[name] = 1
        stack.append(name)
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                cycles.append(" -> ".join(stack[stack.index(target):] + [target]))
            elif target not in state:
                visit(target)
        stack.pop()
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_public_api_names_what_the_layers_below_it_define():
    import importlib

    import leccr_cli

    for name, module in leccr_cli._API.items():
        assert _layer(module) > API, f"{name} comes from {module}, which is not below the public API"
        assert hasattr(importlib.import_module(module), name), f"{module} defines no {name}"


def test_the_checker_sees_function_local_imports(tmp_path):
    module = tmp_path / "leccr_cli" / "sample.py"
    module.parent.mkdir()
    module.write_text(
        "def f():\n    from leccr_cli.training.trainer import train\n    from . import errors\n", encoding="utf-8"
    )
    known = {"leccr_cli.sample": module, "leccr_cli.training.trainer": module, "leccr_cli.errors": module}
    assert _imports("leccr_cli.sample", module, known) == {"leccr_cli.training.trainer", "leccr_cli.errors"}
