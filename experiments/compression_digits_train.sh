#!/bin/bash
# Trains the quickstart (configs/quickstart.py) in fp32 and bf16 for the given
# seeds into $ROOT/{fp32,bf16}_e$EPOCHS_s{seed} (a run whose workdir exists is
# skipped; start one process per seed set to run them side by side);
# experiments/compression_digits.py reads them. EPOCHS: the quickstart's 120,
# or fewer where the machine is too loaded for 6 full runs (40 were used).
#   EPOCHS=40 nice -n 5 bash experiments/compression_digits_train.sh /tmp/comp 0 1 2
ROOT=${1:-/tmp/comp}; shift
EPOCHS=${EPOCHS:-120}
for seed in "${@:-0 1 2}"; do
  for mp in fp32 bf16; do
    wd=$ROOT/${mp}_e${EPOCHS}_s$seed
    [ -d $wd ] && continue
    arg=""; [ $mp = bf16 ] && arg="--config.mixed_precision=bf16"
    /usr/bin/time -v python -m vitjax.main --config=configs/quickstart.py --workdir=$wd \
      --config.seed=$seed --config.progress_bar=False --config.num_epochs=$EPOCHS \
      --config.checkpoint_every_steps=1000 $arg > $wd.log 2>&1
  done
done
