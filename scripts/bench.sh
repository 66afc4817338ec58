#!/usr/bin/env bash
# Every benchmark, each a ratio measured in one run; figures go to the terminal and bench/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
$PY bench/featurize_bench.py
$PY bench/phis_bench.py
$PY bench/distill_bench.py
$PY bench/compress_bench.py
