#!/usr/bin/env bash
# MaskFormer (PVT v2-b0 backbone) from scratch on the embedded shapes set, in the
# SegFormer budget (15 min on 2 CPU cores); reports mIoU and PQ on the 500 held-out images.
#   bash experiments/maskformer_shapes.sh [workdir] [extra --config.k=v ...]
# Logs wall and CPU time (/usr/bin/time -v) and the final eval metrics; metrics.jsonl in
# the workdir has train/images_per_s (steps/s = images_per_s / batch_size).
set -euo pipefail
cd "$(dirname "$0")/.."
WORKDIR=${1:-/tmp/maskformer_shapes}
shift || true
rm -rf "$WORKDIR"
uptime
/usr/bin/time -v python -m vitjax.main --config=configs/maskformer_shapes.py --workdir="$WORKDIR" "$@"
uptime
grep '"eval/miou"' "$WORKDIR/metrics.jsonl"
