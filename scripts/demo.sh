#!/usr/bin/env bash
# The main job end to end on the embedded default: local Ray, local Zarr store, one process.
set -euo pipefail
cd "$(dirname "$0")/.."
PIPELINE=${1:-tiny}
RADIO=${RADIO:-.venv/bin/radio}  # RADIO="python -m radio.cli" runs a checkout without installing it
export RAY_AUTH_MODE=disabled RAY_DATA_DISABLE_PROGRESS_BARS=1
# The file's default pipeline (tiny) needs no --pipeline: the commands below then read exactly
# as the design card writes them (`radio featurize --teacher sam --mosaic 4`, `radio fit-phis`,
# `radio distill --stage 3`).
P=()
[ "$PIPELINE" = tiny ] || P=(--pipeline "$PIPELINE")

echo "== 1. sample data (DataComp layout, real photos, a few bad samples)"
rm -rf data/sample data/store.zarr runs/tiny
$RADIO sample-data --out data/sample --images 48 --shard-size 16 --corrupt 3 --exotic 4

echo "== 2. read it back through the shard reader (--data takes a folder of tars)"
$RADIO scan "${P[@]}" --data data/sample

# Exit 1 means some tar or sample was bad and was reported; anything else is a real failure.
tolerate_bad_samples() { set +e; "$@"; local status=$?; set -e; [ "$status" -le 1 ] || exit "$status"; }

echo "== 3. featurize: SAM first with mosaic 4 where it fits (the paper's 16 images per SAM canvas),"
echo "      then every other target key (local Ray, local Zarr store; complete work is skipped)"
tolerate_bad_samples $RADIO featurize --teacher sam --mosaic 4 "${P[@]}"
tolerate_bad_samples $RADIO featurize "${P[@]}"

echo "== 4. what the store holds, and a consistency check"
STORE=$($RADIO config show "${P[@]}" | .venv/bin/python -c "import sys, yaml; print(yaml.safe_load(sys.stdin)['store']['path'])")
$RADIO store info "$STORE"
$RADIO store verify "$STORE"

echo "== 5. PHI-S normalizers from the featurize moments"
$RADIO fit-phis "${P[@]}"

echo "== 6. distill: stages 1, 2, 3 (a few steps each on the tiny pipeline), then export"
$RADIO distill "${P[@]}" --stage 1
$RADIO distill "${P[@]}" --stage 2
$RADIO distill "${P[@]}" --stage 3
OUT=$($RADIO config show "${P[@]}" | .venv/bin/python -c "import sys, yaml; print(yaml.safe_load(sys.stdin)['out'])")
$RADIO plot "${P[@]}"
$RADIO export "${P[@]}" --out "$OUT/export"
.venv/bin/python - "$OUT/export" <<'PY'
import sys, torch, radio
model = radio.load(sys.argv[1])
out = model(torch.rand(2, 3, 432, 432))
print(f"radio.load({sys.argv[1]!r}): summary {tuple(out.summary.shape)}, features {tuple(out.features.shape)}, "
      + ", ".join(f"{k} {tuple(v.features.shape)}" for k, v in out.adaptors.items()))
PY

echo "== 7. evaluation of the demo student: scale equivariance, fidelity on held-out rows, a PCA picture"
rm -rf data/labeled
$RADIO sample-data --labeled --out data/labeled --images 2
$RADIO eval equivariance --model "$OUT/export" --images data/labeled/val --resolutions 128,192,256,384,512 --max-images 8 --tiling
$RADIO eval fidelity --model "$OUT/export" "${P[@]}"
$RADIO viz pca --model "$OUT/export" --images data/labeled/val --max-images 3 --resolutions 128,256,512 --out "$OUT/pca.png"

echo "== 8. downstream probe: linear-probe segmentation of the demo student on texture mosaics (ADE20k layout),"
echo "      with a random-init student of the same size, the store's teachers and a chance-level head"
rm -rf data/seg
$RADIO sample-data --task seg --out data/seg --images 24
$RADIO eval seg --model "$OUT/export" --data data/seg/ADEChallengeData2016 --crop 64 --iterations 60 --warmup 5 --lr 0.01 --scale-range 1,1
