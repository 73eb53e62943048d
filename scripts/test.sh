#!/usr/bin/env bash
# Run the test suite in .venv (created by scripts/setup.sh). Exit 5 (no tests collected) is an error.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
