#!/usr/bin/env bash
# SegFormer-B0 from scratch on the embedded shapes set (issue 6 target:
# mIoU >= 0.8 on the 500 held-out validation images within 15 min on 2 CPU cores).
#   bash experiments/segformer_shapes.sh [workdir] [extra --config.k=v ...]
# Logs wall time and the final eval metrics; metrics.jsonl in the workdir has
# train/images_per_s (steps/s = images_per_s / batch_size) and every eval.
set -euo pipefail
cd "$(dirname "$0")/.."
WORKDIR=${1:-/tmp/segformer_shapes}
shift || true
rm -rf "$WORKDIR"
start=$(date +%s)
python -m vitjax.main --config=configs/segformer_shapes.py --workdir="$WORKDIR" "$@"
end=$(date +%s)
echo "wall_time_s=$((end - start))"
grep '"eval/miou"' "$WORKDIR/metrics.jsonl"
