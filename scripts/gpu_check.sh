#!/usr/bin/env bash
# The GPU check (issue 15): featurize with real-size random-init teachers (DINOv2-g-reg@224,
# SigLIP so400m@224, SAM-H@256 mosaic 4) over 2000 sample photos, train a ViT-B student for 200
# steps of stage 1 in bf16 with 4 loader workers; the last line is one JSON object (with the
# trainer's model FLOPs utilisation, MFU, against the GPU model's peak dense bf16 FLOP/s).
#   bash scripts/gpu_check.sh            one GPU, < 10 min
#   bash scripts/gpu_check.sh --tiny     tiny teachers and student on CPU (CI)
# Installs nothing beyond `make install` (run only when the venv is missing).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || make install
export RAY_DATA_DISABLE_PROGRESS_BARS=1
exec .venv/bin/python scripts/gpu_check.py "$@"
