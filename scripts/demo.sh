#!/usr/bin/env bash
# The main job end to end on the embedded default: local Ray, local Zarr store, one process.
set -euo pipefail
cd "$(dirname "$0")/.."
PIPELINE=${1:-tiny}
RADIO=.venv/bin/radio
export RAY_AUTH_MODE=disabled RAY_DATA_DISABLE_PROGRESS_BARS=1

echo "== 1. sample data (DataComp layout, real photos, a few bad samples)"
rm -rf data/sample
$RADIO sample-data --out data/sample --images 48 --shard-size 16 --corrupt 3 --exotic 4

echo "== 2. read it back through the shard reader"
$RADIO scan --pipeline "$PIPELINE"
