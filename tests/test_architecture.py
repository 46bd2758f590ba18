"""The package's shape: imports point one way, one module owns the run folder, code stays small."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "celltune"
#: Every file name of a run or study folder: only celltune/rundir.py may spell them.
RUN_FOLDER_FILES = (
    "config.yaml", "fingerprint.json", "splits.json", "threshold.json", "done.json", "metrics.csv", "summary.json",
    "per_image.csv", "best.ckpt", "last.ckpt", "study.yaml", "results.md", "results.csv",
    "report.html", "loss_curves.png", "threshold_curves.png",
)
MAX_FUNCTION_LINES = 60
MAX_CLI_LINES = 350


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = ["celltune", *path.relative_to(SRC).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imports(tree: ast.AST, module: str, known: set[str], is_package: bool) -> set[str]:
    """celltune modules imported anywhere in a module (top level or inside functions)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)
    return {name for name in found if name in known and name != module}


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {
        name: _imports(ast.parse(path.read_text()), name, known, path.name == "__init__.py")
        for name, path in modules.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert len(graph) > 40 and "celltune.rundir" in graph["celltune.workflows.run"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_lower_rooms_never_import_the_rooms_above_them():
    """io/config/rundir are the ground; data, models and evaluation never reach up to the
    workflows, the report or the CLI."""
    upper = ("celltune.cli", "celltune.workflows", "celltune.report")
    for module, targets in import_graph().items():
        if module.startswith(upper):
            continue
        assert not [t for t in targets if t.startswith(upper)], module


def _docstring_nodes(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def _spelled_file_names(path: Path) -> list[str]:
    """Run-folder file names in the module's string literals (docstrings excluded)."""
    tree = ast.parse(path.read_text())
    docs = _docstring_nodes(tree)
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            hits += [name for name in RUN_FOLDER_FILES if name in node.value]
    return hits


def test_only_rundir_spells_run_folder_file_names():
    offenders = {
        str(path.relative_to(SRC)): hits
        for path in SRC.rglob("*.py")
        if path.name != "rundir.py" and (hits := _spelled_file_names(path))
    }
    # The CLI's help texts name the files a command reads or writes, for the user.
    for cli in ("cli.py", "cli_data.py", "cli_deploy.py"):
        offenders.pop(cli, None)
    assert offenders == {}
    assert set(_spelled_file_names(SRC / "rundir.py")) >= set(RUN_FOLDER_FILES)


def test_the_grep_catches_a_planted_file_name(tmp_path):
    planted = tmp_path / "mod.py"
    planted.write_text('"""Docs may say config.yaml."""\nPATH = "runs/x/threshold.json"\n')
    assert _spelled_file_names(planted) == ["threshold.json"]


def _code_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines of a function without its docstring."""
    total = node.end_lineno - node.lineno + 1
    first = node.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
        total -= first.end_lineno - first.lineno + 1
    return total


def _long_functions(path: Path) -> list[str]:
    """Functions over the limit (docstring aside) with no comment just above them saying why."""
    lines = path.read_text().splitlines()
    long = []
    for node in ast.walk(ast.parse("\n".join(lines))):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
        if _code_lines(node) <= MAX_FUNCTION_LINES:
            continue
        if first >= 2 and lines[first - 2].strip().startswith("#"):
            continue
        long.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name}")
    return long


def test_functions_are_short_or_say_why():
    assert [f for path in sorted(SRC.rglob("*.py")) for f in _long_functions(path)] == []


def test_the_cli_stays_thin():
    assert len((SRC / "cli.py").read_text().splitlines()) <= MAX_CLI_LINES


@pytest.mark.parametrize("room", ["viz", "data"])
def test_viz_and_data_print_nothing_and_viz_reads_no_files(room):
    """viz draws from arrays it is given; data returns values (no console, no figures)."""
    for path in (SRC / room).rglob("*.py"):
        text = path.read_text()
        assert "console" not in text.lower(), path
        if room == "viz":
            assert "read_image" not in text and "read_per_image" not in text, path
        else:
            assert "matplotlib" not in text and "rich" not in text, path
