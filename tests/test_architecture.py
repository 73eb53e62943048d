"""The import rules of docs/architecture.md, enforced with import-linter (contracts in pyproject.toml), and no import
cycle between two files of the package.

Green on this tree; red on a copy with one deliberately broken import (a call-time `import torch` in the runtime,
`import onnx` in the builder, a function-local import that closes a cycle): static analysis counts imports inside
functions, so "torch-free" means at call time and a cycle hidden in a function is still a cycle.
"""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).parent / "lint-imports"


def lint(root: Path) -> subprocess.CompletedProcess:
    """lint-imports on the package under `root` (its pyproject.toml), that copy first on the path."""
    env = {"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"}
    return subprocess.run([str(LINT), "--config", str(root / "pyproject.toml"), "--no-cache"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


def broken_copy(tmp_path: Path, module: str, line: str) -> Path:
    """The package and its contracts copied under tmp_path, with `line` added inside a function of `module`."""
    root = tmp_path / "copy"
    shutil.copytree(REPO / "edge_lorax", root / "edge_lorax", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    target = root / (module.replace(".", "/") + ".py")
    target.write_text(target.read_text() + f"\n\ndef _deliberately_broken():\n    {line}\n")
    return root


def test_import_rules_hold_on_this_tree():
    proc = lint(REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


@pytest.mark.parametrize("module, line, contract", [
    ("edge_lorax.runtime.infer", "import torch", "runtime serves only"),
    ("edge_lorax.runtime.pte", "import executorch.runtime", "runtime serves only"),
    ("edge_lorax.runtime.users", "from edge_lorax.builder import project", "runtime serves only"),
    ("edge_lorax.builder.train", "import onnx", "the builder knows nothing of ONNX"),
    ("edge_lorax.formats.user", "import torch", "formats import no torch"),
])
def test_a_deliberately_broken_import_is_caught(tmp_path, module, line, contract):
    proc = lint(broken_copy(tmp_path, module, line))
    assert proc.returncode != 0
    broken = [ln for ln in proc.stdout.splitlines() if ln.endswith("BROKEN")]
    assert any(b.startswith(contract) for b in broken), proc.stdout[-3000:]


def _modules(package: Path) -> dict:
    """{dotted module name: file} of every .py under `package` (a package is named by its __init__.py)."""
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imported(name: str, path: Path, modules: dict) -> set:
    """The package's modules that `name` imports anywhere in its file (inside functions too), relative ones resolved."""
    here = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(here.split(".")[:len(here.split(".")) - node.level + 1]) if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            found.update(f"{module}.{alias.name}" if f"{module}.{alias.name}" in modules else module for alias in node.names)
    return {_owner(m, modules) for m in found} - {None, name}


def _owner(dotted: str, modules: dict):
    """The longest prefix of `dotted` that is one of `modules` (`pkg.mod.func` -> `pkg.mod`), else None."""
    while dotted and dotted not in modules:
        dotted = dotted.rpartition(".")[0]
    return dotted or None


def file_cycles(package: Path) -> list:
    """Every set of the package's files that import each other round in a circle (strongly connected, 2 or more)."""
    modules = _modules(package)
    graph = {name: _imported(name, path, modules) for name, path in modules.items()}
    reach = {name: _reachable(graph, name) for name in graph}
    groups = {frozenset(m for m in reach[name] if name in reach[m]) | {name} for name in graph}
    return sorted(sorted(g) for g in groups if len(g) > 1)


def _reachable(graph: dict, start: str) -> set:
    """Every module `start` imports, directly or through others."""
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_no_import_cycle_between_files():
    assert file_cycles(REPO / "edge_lorax") == []


@pytest.mark.parametrize("module, line, cycle", [
    ("edge_lorax.builder.tasks_pkg", "from edge_lorax.builder.data import load_task",
     ["edge_lorax.builder.data", "edge_lorax.builder.tasks_pkg"]),
    ("edge_lorax.builder.metrics", "from .loop import fit",
     ["edge_lorax.builder.generative", "edge_lorax.builder.loop", "edge_lorax.builder.metrics"]),
    ("edge_lorax.bench.workers", "from edge_lorax.bench import prepare", ["edge_lorax.bench.prepare", "edge_lorax.bench.workers"]),
])
def test_a_cycle_hidden_in_a_function_is_caught(tmp_path, module, line, cycle):
    assert file_cycles(broken_copy(tmp_path, module, line) / "edge_lorax") == [cycle]


PACKAGES = ("builder", "export", "runtime", "formats", "bench")


def _bound(tree: ast.Module) -> set:
    """Names a module binds outside its functions: definitions, assignments and imports (under `if` too)."""
    names = set()
    for stmt in tree.body:
        if isinstance(stmt, (ast.FunctionDef, ast.ClassDef)):
            names.add(stmt.name)
            continue
        for node in ast.walk(stmt):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names.update((a.asname or a.name).partition(".")[0] for a in node.names)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
    return names


def _exported(tree: ast.Module) -> list:
    """The literal `__all__` of a module ([] when it has none)."""
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in stmt.targets):
            return ast.literal_eval(stmt.value)
    return []


@pytest.mark.parametrize("package", PACKAGES)
def test_every_package_has_a_front_door(package):
    """A docstring naming the front door and an `__all__` whose every name a static reader finds: a submodule file, or
    a name the __init__ binds (an import, under `if TYPE_CHECKING` included)."""
    init = REPO / "edge_lorax" / package / "__init__.py"
    tree = ast.parse(init.read_text(encoding="utf-8"))
    submodules = {p.stem for p in init.parent.glob("*.py")} - {"__init__"}
    assert "Front door" in (ast.get_docstring(tree) or "")
    exported = _exported(tree)
    assert exported and not [n for n in exported if n not in submodules and n not in _bound(tree)], exported


def test_import_edge_lorax_export_stays_cheap_and_its_names_are_their_homes():
    """`import edge_lorax.export` loads no torch / onnx; each lazily loaded name is the object its TYPE_CHECKING import
    names (the table __getattr__ reads agrees with the imports static readers follow)."""
    tree = ast.parse((REPO / "edge_lorax" / "export" / "__init__.py").read_text(encoding="utf-8"))
    guarded = [s for s in tree.body if isinstance(s, ast.If) and getattr(s.test, "id", None) == "TYPE_CHECKING"]
    homes = {a.name: node.module for s in guarded for node in s.body for a in node.names}
    code = ("import sys, importlib, edge_lorax.export as e; heavy = [m for m in ('torch', 'onnx', 'transformers') if m in sys.modules]; "
            f"print(heavy, all(getattr(e, n) is getattr(importlib.import_module(m), n) for n, m in {homes!r}.items()))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert done.stdout.split() == ["[]", "True"], done.stderr[-2000:]
    table = next(ast.literal_eval(s.value) for s in tree.body if isinstance(s, ast.Assign) and s.targets[0].id == "_HOMES")
    assert homes and {n: f"edge_lorax.export.{m}" for n, m in table.items()} == homes
