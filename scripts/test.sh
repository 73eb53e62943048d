#!/usr/bin/env bash
# Lint, then run the test suite in .venv (created by scripts/setup.sh). Exit 5 (no tests collected) is an error.
# Quick loop while developing: bash scripts/test.sh -m "not slow" (skips the real-MiniLM tests).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/ruff check .   # the linter (pyproject.toml [tool.ruff]); the import rules are a test (tests/test_architecture.py)
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
