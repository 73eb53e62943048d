#!/usr/bin/env bash
# The bundles of benchmarks/arm64/report.md, made on the x86 host (resumable: folders that exist are skipped).
# Encoder: the demo's subspace and trained NYT user (`edge-lorax demo`, 9 MiniLM source adapters, K=8). Decoder:
# SmolLM2-135M-Instruct, a subspace of the twelve committed adapters-smollm2 (K=8), the tweets-binary adapter projected.
set -euo pipefail
cd "$(dirname "$0")/../.."
W="${EDGE_LORAX_ARM64_WORK:-$HOME/.cache/edge-lorax/arm64-work}"
E=.venv/bin/edge-lorax
mkdir -p "$W"
[ -f "$W/demo/nyt-trained.npz" ] || $E demo -o "$W/demo" --no-bench
[ -d "$W/minilm" ] || $E export --subspace "$W/demo/subspace" --coeffs "$W/demo/nyt-trained.npz" -o "$W/minilm" --quantize int8 --fuse --no-gradient
[ -d "$W/minilm-per-example" ] || $E export --subspace "$W/demo/subspace" --coeffs "$W/demo/nyt-trained.npz" -o "$W/minilm-per-example" --per-example --no-gradient
[ -d "$W/smollm2-sub" ] || $E build adapters-smollm2/*/ -o "$W/smollm2-sub" -k 8
[ -f "$W/tweets-binary.npz" ] || $E project "$W/smollm2-sub" adapters-smollm2/tweets-binary -o "$W/tweets-binary.npz"
for q in fp32 int8 int4; do
  opt=(); [ $q = fp32 ] || opt=(--quantize $q)
  [ -d "$W/smollm2-$q" ] || $E export --model smollm2 --subspace "$W/smollm2-sub" --coeffs "$W/tweets-binary.npz" -o "$W/smollm2-$q" "${opt[@]}" --no-gradient
done
# The int4 divergence probe: the same int4 weights with fp32 activations in MatMulNBits (accuracy_level 1; the CPU
# default 4 quantizes each activation block to int8, with instruction-set-specific kernels)
[ -d "$W/smollm2-int4-acc1" ] || $E export --model smollm2 --subspace "$W/smollm2-sub" --coeffs "$W/tweets-binary.npz" -o "$W/smollm2-int4-acc1" --quantize int4 --builder-option accuracy_level=1 --no-gradient
