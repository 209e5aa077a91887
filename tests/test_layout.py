"""The layering the project promises: no import circle in the library, the CLI a leaf, the library light
(no typer, streamlit, plotly or umap on import), every package installed, modules of one concern."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from itda_core.errors import ITDAError
from itda_core.extras import require

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ROOT / "itda_core"
MAX_LINES = 400
# Modules allowed past MAX_LINES, each with the one concern that needs the length.
LONG_MODULES: dict[str, str] = {}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _in_type_checking(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The library modules ``path`` imports, at module level or inside functions (a lazy import is still an
    edge of the graph), leaving out ``if TYPE_CHECKING:`` blocks."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if _in_type_checking(node, parents):
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in modules else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name in modules}


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in LIBRARY.rglob("*.py")}
    return {name: _imports(path, set(files)) - {name} for name, path in files.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph``, or None. A package's ``__init__`` importing its own submodules is not a
    circle unless a submodule imports the package back."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_circle_in_the_library():
    cycle = _cycle(_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_the_cycle_check_finds_a_circle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_nothing_but_the_cli_imports_the_cli():
    graph = _graph()
    importers = sorted(name for name, deps in graph.items() if not name.startswith("itda_core.cli")
                       and any(dep.startswith("itda_core.cli") for dep in deps))
    assert importers == []
    for path in [*(ROOT / "dashboard").rglob("*.py")]:
        assert "itda_core.cli" not in path.read_text(encoding="utf-8"), path


def test_store_is_persistence_only():
    graph = _graph()
    runs_models = {"itda_core.trainer", "itda_core.extraction", "itda_core.jobs", "itda_core.evaluation",
                   "itda_core.similarity", "itda_core.mp", "itda_core.models.loading"}
    for name, deps in graph.items():
        if name.startswith("itda_core.store"):
            bad = sorted(d for d in deps if any(d == r or d.startswith(r + ".") for r in runs_models))
            assert bad == [], f"{name} imports {bad}"


# A SQL statement, or a call that runs one: the store's modules (itda_core/store/) hold all of them.
SQL = re.compile(r"\b(?:SELECT|INSERT|UPDATE)\s|\bCREATE\s+(?:OR\s+REPLACE\s+)?(?:TEMP\s+)?TABLE\b|\bDELETE\s+FROM\b"
                 r"|\.execute(?:many)?\(|\.sql\(")


def _sql_outside_the_store(root: Path) -> list[str]:
    """``path:line: text`` of every line with SQL in ``root``'s library outside its store, and in its dashboard."""
    library = root / "itda_core"
    paths = [p for p in library.rglob("*.py") if p.relative_to(library).parts[0] != "store"]
    found = []
    for path in sorted([*paths, *(root / "dashboard").rglob("*.py")]):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if SQL.search(line):
                found.append(f"{path.relative_to(root)}:{number}: {line.strip()}")
    return found


def test_all_sql_is_in_the_store(tmp_path: Path):
    assert _sql_outside_the_store(ROOT) == []
    job = tmp_path / "itda_core" / "jobs" / "job.py"  # the check finds what it is for
    job.parent.mkdir(parents=True)
    (tmp_path / "itda_core" / "store").mkdir()
    (tmp_path / "itda_core" / "store" / "q.py").write_text('con.execute("SELECT 1")\n', encoding="utf-8")
    lines = ['con.execute("SELECT 1")', 'sql = "DELETE FROM t WHERE x = ?"', "q = f'INSERT INTO {t} VALUES (1)'",
             'CREATE TABLE IF NOT EXISTS t (x INT)', "con.sql(text)", "con.executemany(q, rows)",
             "UPDATE t SET x = 1", "# select the rows; update them"]
    job.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert len(_sql_outside_the_store(tmp_path)) == len(lines) - 1


def test_importing_the_library_loads_no_front_end():
    code = (
        "import sys, itda_core, itda_core.trainer, itda_core.similarity, itda_core.store, itda_core.store.queries, "
        "itda_core.jobs, itda_core.jobs.index, itda_core.evaluation, itda_core.dictionary, itda_core.mp\n"
        "heavy = {'typer', 'streamlit', 'plotly', 'umap', 'kaleido', 'ray', 'nnsight', 'accelerate', 'itda_dashboard', "
        "'itda_core.cli'}\n"
        "print(sorted(m for m in sys.modules if m in heavy or m.split('.')[0] in heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_every_package_is_installed():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    folders = {p.parent for p in [*LIBRARY.rglob("*.py"), *(ROOT / "dashboard").rglob("*.py")]}
    found = {_module_name(folder / "__init__.py").replace("dashboard", "itda_dashboard", 1) for folder in folders}
    assert set(config["packages"]) == found
    assert config["package-dir"] == {"itda_dashboard": "dashboard"}


def test_modules_stay_small():
    files = [p for folder in ("itda_core", "dashboard", "tests", "bench") for p in (ROOT / folder).rglob("*.py")]
    long = {str(p.relative_to(ROOT)): n for p in files
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert set(long) <= set(LONG_MODULES), f"over {MAX_LINES} lines: {long}"


def test_a_missing_extra_names_what_to_install():
    with pytest.raises(ITDAError, match=r"pip install 'itda\[viz\]'"):
        require("plotly_that_does_not_exist.graph_objects", "viz", "the sweep figure")
    assert require("json", "viz", "a test").dumps([]) == "[]"
