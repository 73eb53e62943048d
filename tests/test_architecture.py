"""The import rules of docs/architecture.md, enforced with import-linter (contracts in pyproject.toml).

Green on this tree; red on a copy with one deliberately broken import (a call-time `import torch` in the runtime,
`import onnx` in the builder): static analysis counts imports inside functions, so "torch-free" means at call time.
"""

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
    ("edge_lorax.runtime.users", "from edge_lorax.builder import project", "runtime serves only"),
    ("edge_lorax.builder.train", "import onnx", "the builder knows nothing of ONNX"),
    ("edge_lorax.formats.user", "import torch", "formats import no torch"),
])
def test_a_deliberately_broken_import_is_caught(tmp_path, module, line, contract):
    proc = lint(broken_copy(tmp_path, module, line))
    assert proc.returncode != 0
    broken = [ln for ln in proc.stdout.splitlines() if ln.endswith("BROKEN")]
    assert any(b.startswith(contract) for b in broken), proc.stdout[-3000:]
