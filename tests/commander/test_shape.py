"""The commander package keeps its shape: small modules, short functions, no import cycles.

The limits are the project's (no file over 450 lines, no function over 60); the commander was
reshaped to meet them, and this keeps a later change from quietly growing a module back.
"""

from __future__ import annotations

import ast
from pathlib import Path

COMMANDER = Path(__file__).resolve().parents[2] / "relay" / "commander"
MAX_FILE_LINES = 450
MAX_FUNCTION_LINES = 60


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(COMMANDER.rglob("*.py")):
        parts = path.relative_to(COMMANDER.parent.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def test_no_long_files_or_functions() -> None:
    too_long = []
    for name, path in _modules().items():
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > MAX_FILE_LINES:
            too_long.append(f"{name}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{name}.{node.name}: {length} lines")
    assert not too_long, too_long


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The commander modules ``name`` imports (a package's own __init__ aside)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        for target in targets:
            if target in modules and target != name and not name.startswith(target + "."):
                found.add(target)
    return found


def test_no_import_cycles() -> None:
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        for nxt in sorted(graph[name]):
            assert nxt not in path, f"import cycle: {' -> '.join([*path[path.index(nxt) :], nxt])}"
            if nxt not in done:
                visit(nxt, [*path, nxt])
        done.add(name)

    for name in graph:
        visit(name, [name])
    assert graph["relay.commander.app"] >= {
        "relay.commander.routes",
        "relay.commander.views",
    }  # the scan works
