#!/usr/bin/env bash
# The tests in .venv-optimum (created by scripts/setup-optimum.sh): transformers 4.57 + optimum-onnx +
# sentence-transformers. Runs the not-slow suite there, tests/test_hf_interop.py included, which must not skip in
# this environment (EDGE_LORAX_REQUIRE_HF). The slow real-MiniLM tests run in .venv (scripts/test.sh). Args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false EDGE_LORAX_REQUIRE_HF=1
.venv-optimum/bin/python -m pytest -q -p no:cacheprovider -m "not slow" "$@"
