#!/usr/bin/env bash
# Issue 30's grid over the whole MiniLM family (adapters/, 68 adapters), in priority order, on two workers of one torch
# thread each (the targets split in two halves). Resumable: every cell is one JSON under runs/, a rerun skips it.
#
#   bash benchmarks/subspace_count/grid.sh            # then: .venv/bin/python benchmarks/subspace_count/report.py
#
# Cells, per worker: training-free projections (10 targets x 3 kinds x N in 2..64 x 3 draws), then trained cells at 64
# rows (probe, LoRA r=8, VeRA at the budget, random basis, EigenLoRAx mixed N=2/8/all and same-family N=2/all), 256 rows
# and all rows (steps from the plateau study: run.py STEPS_BY_ROWS; VeRA at 64 rows only, the random basis at all rows
# for the first target only: the 2-core budget), the advise measure, then the spread (other-family draws, mean alone
# and mean dropped, seeds 1-2, more draws at N=8/32) as far as time allows.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUN="nice -n 15 .venv/bin/python benchmarks/subspace_count/run.py${POOL:+ --pool $POOL}"  # POOL=64: the first 64
HALF_A=tweets-binary,spam-sms,disaster-request,20ng-sci.med
HALF_B=amazon-3class,trec-coarse,disaster-earthquake,20ng-rec.autos

worker() {  # $1: fit targets, $2: extra projection-only target
    $RUN --phase proj --targets "$1,$2" --ns 2,4,8,16,32,0 --draws 3
    $RUN --phase fit --targets "$1" --rows 64 --methods probe,lora,vera,random,eigen-keep --kinds mixed --ns 0,2 --draws 1
    $RUN --phase fit --targets "$1" --rows 256 --methods probe,lora,random,eigen-keep --kinds mixed --ns 0 --draws 1
    $RUN --phase fit --targets "$1" --rows 0 --methods probe,lora,eigen-keep --kinds mixed --ns 0 --draws 1
    $RUN --phase fit --targets "$1" --rows 64 --methods eigen-keep --kinds mixed --ns 8 --draws 1
    $RUN --phase fit --targets "$1" --rows 64 --methods eigen-keep --kinds same --ns 0,2 --draws 1
    $RUN --phase advise --targets "$1" --kinds mixed --ns 2,0 --draws 1
    $RUN --phase fit --targets "$1" --rows 64 --methods eigen-keep --kinds other --ns 0 --draws 1
    $RUN --phase fit --targets "$1" --rows 64 --methods mean,eigen-drop --kinds mixed --ns 0 --draws 1
    $RUN --phase fit --targets "$1" --rows 64 --methods random,eigen-keep --kinds mixed --ns 0 --draws 1 --seeds 3
    $RUN --phase fit --targets "$1" --rows 64 --methods eigen-keep --kinds mixed --ns 8,32 --draws 3
}

worker "$HALF_A" nyt-binary > "${LOG_DIR:-/tmp}/subspace_count_a.log" 2>&1 &
worker "$HALF_B" disaster-food > "${LOG_DIR:-/tmp}/subspace_count_b.log" 2>&1 &
wait
