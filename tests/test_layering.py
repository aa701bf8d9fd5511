"""The package's layering: each module imports only its own layer or the layers below, with no cycles.

Imports are read from the source (ast), function-local ones included, so a lazy import
cannot hide a cycle or an import that goes up the layering.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "leccr_cli"

# top first; a module belongs to the first layer with a prefix that matches its name
LAYERS = [
    ("cli", ("leccr_cli.cli", "leccr_cli.__main__", "leccr_cli.testing")),
    ("app", ("leccr_cli.app",)),
    ("train", ("leccr_cli.training.trainer",)),
    ("index, search", ("leccr_cli.retrieval.index", "leccr_cli.retrieval.search")),
    ("evaluate", ("leccr_cli.retrieval.evaluate",)),
    ("slots", ("leccr_cli.prep.features.build",)),
    (
        "pipeline, runs, jobs",
        ("leccr_cli.training.pipeline", "leccr_cli.runs", "leccr_cli.prep.describe", "leccr_cli.prep.translate"),
    ),
    (
        "model, data, metrics",
        (
            "leccr_cli.model", "leccr_cli.data", "leccr_cli.corpus", "leccr_cli.prep.shards", "leccr_cli.prep.features.cache",
            "leccr_cli.retrieval.metrics", "leccr_cli.retrieval.prefilter",
        ),
    ),
    (
        "base",
        (
            "leccr_cli.config", "leccr_cli.utils", "leccr_cli.errors",
            "leccr_cli.prep", "leccr_cli.prep.features", "leccr_cli.retrieval", "leccr_cli.training",
        ),
    ),
]


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
        return len(LAYERS) - 1
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


def test_the_checker_sees_function_local_imports(tmp_path):
    module = tmp_path / "leccr_cli" / "sample.py"
    module.parent.mkdir()
    module.write_text("def f():\n    from leccr_cli.training.trainer import train\n    from . import errors\n", encoding="utf-8")
    known = {"leccr_cli.sample": module, "leccr_cli.training.trainer": module, "leccr_cli.errors": module}
    assert _imports("leccr_cli.sample", module, known) == {"leccr_cli.training.trainer", "leccr_cli.errors"}
