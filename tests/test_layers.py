"""The package's layering, enforced: every import (module-level or inside a function) points to the same or a lower
layer, and no modules import each other in a circle.

The layers, lowest first (the README's layout section states the same line):

    core (errors, registry, io, paths, boxes, progress, provenance, config, runs, tracking)
    -> data, metrics, submission, competitions -> synth, models, ensemble -> train, predict -> report, explain, deploy
    -> tasks -> cli
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from cxrdet import paths

SRC = paths.REPO_ROOT / "src"
PACKAGE = "cxrdet"
# Layer of each top-level module or subpackage of cxrdet (a subpackage's modules share its layer).
LAYERS: dict[str, int] = {
    **dict.fromkeys(("errors", "registry", "io", "paths", "boxes", "progress", "provenance", "config", "runs",
                     "tracking"), 0),
    **dict.fromkeys(("data", "metrics", "submission", "competitions"), 1),
    **dict.fromkeys(("synth", "models", "ensemble"), 2),
    **dict.fromkeys(("train", "predict"), 3),
    **dict.fromkeys(("report", "explain", "deploy"), 4),
    "tasks": 5,
    **dict.fromkeys(("cli", "__main__"), 6),
}


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    found = {}
    for path in (SRC / PACKAGE).rglob("*.py"):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules `name` imports, anywhere in its body (lazy imports inside functions count too)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out - {PACKAGE}


def layer_of(name: str) -> int:
    top = name.split(".")[1]
    if top not in LAYERS:
        raise AssertionError(f"{name}: no layer assigned; add {top!r} to LAYERS in tests/test_layers.py and the README")
    return LAYERS[top]


GRAPH = {name: imports_of(name, path, set(modules())) for name, path in modules().items()}


def test_every_module_has_a_layer() -> None:
    for name in GRAPH:
        if name != PACKAGE:
            layer_of(name)


def test_no_module_imports_from_a_higher_layer() -> None:
    upward = sorted(f"{a} (layer {layer_of(a)}) imports {b} (layer {layer_of(b)})"
                    for a, targets in GRAPH.items() if a != PACKAGE for b in targets if layer_of(b) > layer_of(a))
    assert not upward, "imports that point up:\n" + "\n".join(upward)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` as a list of modules (first = last), or None."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


def test_no_import_cycle() -> None:
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_checks_can_fail() -> None:
    # A made-up graph with an upward import and a cycle: the helpers must see both.
    graph = {"cxrdet.data.a": {"cxrdet.train"}, "cxrdet.train": {"cxrdet.data.a"}}
    assert find_cycle(graph) == ["cxrdet.data.a", "cxrdet.train", "cxrdet.data.a"]
    assert layer_of("cxrdet.train") > layer_of("cxrdet.data.a")
    with pytest.raises(AssertionError, match="no layer assigned"):
        layer_of("cxrdet.newthing")


def test_only_the_task_registry_reads_a_configs_task() -> None:
    # The task is decided once (cxrdet.tasks); elsewhere no module reads `task` from a config to branch on it.
    readers = sorted(name for name, path in modules().items()
                     if name != "cxrdet.tasks" and re.search(r'get\("task"|task_of\(|\["task"\]',
                                                             path.read_text(encoding="utf-8")))
    # Two checks that a file is what it should be, not dispatches: transfer refuses an init_from checkpoint that is no
    # classifier's, and the ONNX classifier runner refuses a detector's sidecar.
    assert readers == ["cxrdet.deploy.export", "cxrdet.models.transfer"], readers
