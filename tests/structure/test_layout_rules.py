"""The code's shape, checked: small files and functions, no import cycles, contracts that stand alone.

These are the reshaping rules of the design map (shared/design.md): each concern has one home, data
flows one way, and a reader can hold any file or function in their head.  A rule that must bend for a
good reason is bent here, in ``EXCEPTIONS``, with the reason next to it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MAX_FILE_LINES = 450
MAX_FUNCTION_LINES = 60
#: "path" or "path::function" -> why it may be longer
EXCEPTIONS: dict[str, str] = {}


def python_files(*dirs: str) -> Iterator[Path]:
    for d in dirs:
        yield from sorted((REPO / d).rglob("*.py"))


def rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def test_no_file_under_relay_is_longer_than_the_limit() -> None:
    long = {
        rel(p): n
        for p in python_files("relay")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_FILE_LINES
        and rel(p) not in EXCEPTIONS
    }
    assert not long, f"files over {MAX_FILE_LINES} lines: {long}"


def _functions(tree: ast.AST) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def test_no_function_under_relay_is_longer_than_the_limit() -> None:
    long = {}
    for path in python_files("relay"):
        for fn in _functions(ast.parse(path.read_text(encoding="utf-8"))):
            size = (fn.end_lineno or fn.lineno) - fn.lineno + 1
            key = f"{rel(path)}::{fn.name}"
            if size > MAX_FUNCTION_LINES and key not in EXCEPTIONS:
                long[key] = size
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def _imports(path: Path, package: str) -> set[str]:
    """Modules of ``package`` that ``path`` imports, at any level (TYPE_CHECKING imports included: a
    cycle through type hints still ties two modules together for a reader)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith(package + "."):
                out.add(node.module)
            elif node.module == package:
                out |= {f"{package}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith(package + ".")}
    return out


@pytest.mark.parametrize("package", ["relay.worker", "relay.commander"])
def test_packages_have_no_import_cycles(package: str) -> None:
    base = REPO / package.replace(".", "/")
    modules = {}
    for path in python_files(package.replace(".", "/")):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    graph = {m: {i for i in _imports(p, package) if i in modules and i != m} for m, p in modules.items()}
    # a package's __init__ re-exporting its modules is not a cycle a reader follows
    graph = {m: deps for m, deps in graph.items() if not (modules[m].name == "__init__.py")}
    seen: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        seen[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if seen.get(d) == 1:
                cycle = stack[stack.index(d) :] + [d]
                raise AssertionError(f"import cycle in {package}: {' -> '.join(cycle)}")
            if d not in seen:
                visit(d)
        stack.pop()
        seen[m] = 2

    for m in sorted(graph):
        if m not in seen:
            visit(m)
    assert base.is_dir() and sum(map(len, graph.values())) > len(graph) // 2  # the scan sees imports


def test_the_wire_schema_loads_no_storage_code() -> None:
    code = (
        "import sys, relay.schema\n"
        "bad = sorted(m for m in sys.modules if m.startswith(('relay.remote', 'relay.ckpt')))\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_shipped_code_reads_no_test_switches() -> None:
    offenders = [
        rel(p)
        for p in [
            *python_files("relay"),
            *python_files("trainer_blackbox"),
            *sorted((REPO / "trainer_blackbox").glob("*.sh")),
        ]
        if "RELAY_TEST_" in p.read_text(encoding="utf-8")
    ]
    assert not offenders, f"test-only switches in shipped code: {offenders}"


def test_benches_import_nothing_from_the_test_tree() -> None:
    offenders = [
        rel(p)
        for p in python_files("bench")
        if any(
            (isinstance(n, ast.ImportFrom) and (n.module or "").split(".")[0] == "tests")
            or (isinstance(n, ast.Import) and any(a.name.split(".")[0] == "tests" for a in n.names))
            for n in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
        )
    ]
    assert not offenders, offenders
