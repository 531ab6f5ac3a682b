"""The shape of the code, checked from the source with `ast`: imports go one way between the
folders (ARCHITECTURE's table), no module-level import cycle, and no source file or function
grows past the sizes a newcomer can hold in their head."""

from __future__ import annotations

import ast
from pathlib import Path

from .conftest import ROOT

PACKAGES = ("pushsync", "store", "worker", "scheduler", "emulators", "api", "bench", "tests")
# layer -> the layers it may import (its own included)
ALLOWED = {
    "core": {"core"},
    "store": {"core", "store"},
    "worker": {"core", "store", "worker"},
    "scheduler": {"core", "store", "worker", "scheduler"},
    "emulators": {"emulators"},
    # the API: the store, the producer client (pushsync.client, core) and pushsync, not the worker
    "api": {"core", "store", "api"},
    "cli": {"core", "store", "worker", "scheduler", "emulators", "api", "cli"},
}
MAX_FILE_LINES = 300
MAX_FUNCTION_LINES = 50


def _sources() -> dict[str, Path]:
    """module name -> file, for every module of ours (migrations aside: Alembic's scripts)."""
    out = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            rel = path.relative_to(ROOT)
            if "migrations" in rel.parts:
                continue
            parts = list(rel.with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _layer(module: str) -> str | None:
    top = module.split(".")[0]
    if top == "pushsync":
        return "cli" if module == "pushsync.cli" or module.startswith("pushsync.cli.") else "core"
    return top if top in ALLOWED else None


def _imports(path: Path, modules: dict, module_level_only: bool) -> set[str]:
    """Our modules that ``path`` imports (at module level only, or anywhere)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                     for a in node.names]
        else:
            continue
        found.update(n for n in names if n.split(".")[0] in PACKAGES and n.split(".")[0] != "tests")
    return found


def test_imports_go_one_way_between_the_folders():
    modules = _sources()
    wrong = []
    for module, path in modules.items():
        layer = _layer(module)
        if layer is None:  # bench and tests may import anything
            continue
        for target in _imports(path, modules, module_level_only=False):
            if _layer(target) not in ALLOWED[layer]:
                wrong.append(f"{module} ({layer}) imports {target} ({_layer(target)})")
    assert wrong == [], "\n".join(sorted(wrong))


def test_no_import_cycle_counting_imports_inside_functions_too():
    """An import inside a function hides a cycle from the interpreter, not from the design: the
    worker's path must run one way (tasks -> ingest -> plan / delivery -> senders)."""
    modules = _sources()
    graph = {m: {_owner(t, modules) for t in _imports(p, modules, module_level_only=False)} - {m, None}
             for m, p in modules.items() if not m.startswith(("tests", "bench"))}
    graph = {m: {t for t in targets if t in graph} for m, targets in graph.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == [], "\n".join(cycles)


# An event's path runs one way: the task -> the micro-batch (ingest) -> the store's part (plan) and
# the sends (delivery) -> the senders. Nothing on the way imports back into the steps before it.
DOWNSTREAM_MAY_NOT_IMPORT = {
    "worker.ingest": {"worker.tasks", "worker.app"},
    "worker.delivery": {"worker.tasks", "worker.app", "worker.ingest"},
    "worker.plan": {"worker.tasks", "worker.app", "worker.ingest", "worker.delivery"},
    "worker.context": {"worker.tasks", "worker.app", "worker.ingest", "worker.delivery", "worker.plan"},
    "worker.intake": {"worker.tasks", "worker.app", "worker.ingest", "worker.delivery", "worker.plan",
                      "worker.context"},
    "worker.coalesce": {"worker.tasks", "worker.app", "worker.ingest", "worker.delivery", "worker.plan",
                        "worker.context"},
}


def test_an_events_path_through_the_worker_runs_one_way():
    modules = _sources()
    wrong = []
    for module, banned in DOWNSTREAM_MAY_NOT_IMPORT.items():
        for target in _imports(modules[module], modules, module_level_only=False):
            owner = _owner(target, modules)
            if owner in banned:
                wrong.append(f"{module} imports {owner}")
    assert wrong == [], "\n".join(wrong)


def _owner(target: str, modules: dict) -> str | None:
    """The module of ours an imported name lives in (``worker.coalesce.FLUSH`` -> ``worker.coalesce``)."""
    while target and target not in modules:
        target = target.rpartition(".")[0]
    return target or None


def test_no_source_file_or_function_outgrows_the_limits():
    too_big = []
    for module, path in _sources().items():
        text = path.read_text()
        if text.count("\n") > MAX_FILE_LINES:
            too_big.append(f"{module}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_big.append(f"{module}.{node.name}: {length} lines")
    assert too_big == [], "\n".join(too_big)


def test_the_checker_sees_a_wrong_import(tmp_path):
    """The direction test must be able to fail: a core module importing the worker is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("import os\n\ndef f():\n    from worker.app import app\n")
    assert _imports(bad, {}, module_level_only=False) == {"worker.app"}
    assert _imports(bad, {}, module_level_only=True) == set()
    assert "worker" not in ALLOWED[_layer("pushsync.client")]
