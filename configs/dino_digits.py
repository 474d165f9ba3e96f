"""DINO pretraining of a small ViT on the embedded UCI digits (labels unused).

  python -m vitjax.main --config=configs/dino_digits.py --workdir=/tmp/dino_digits
  python -m vitjax.tools.probe --workdir=/tmp/dino_digits --method=knn,linear

The encoder is configs/mae_digits.py's (and configs/quickstart.py's) ViT:
16x16 input, patch 4, width 64, 4 blocks, 4 heads, MLP 128; the same budget
(60 epochs = 660 steps of batch 128, AdamW lr 1e-3, 50 warmup steps, cosine).
Multi-crop: 2 global 16x16 crops (area 0.4-1) + 6 local 8x8 crops (area
0.05-0.4, a 2x2 patch grid: the learned position embedding is resampled to
it), colour jitter and solarisation, no flip (a flipped digit is another
digit) and no blur (a 16-pixel crop has nothing to blur at the paper's
sigma). Head: 256 hidden, 64 bottleneck, 1024 outputs. Teacher momentum
0.99 -> 1 (the paper's 0.996 is for ~375k steps; this run has 660), teacher
temperature 0.04 -> 0.07 over the first 10% of the steps.
Measured: see experiments/ssl_digits.md.
"""

from vitjax.config import digits_recipe
from vitjax.tasks.dino import dino_kwargs


def get_config(arg=None):
  del arg
  c = digits_recipe("dino_vit_quickstart", num_epochs=60, learning_rate=1e-3)
  c.task = "dino"
  c.task_kwargs = dino_kwargs(
      global_size=16, local_size=8, num_local_crops=4, local_scale=(0.2, 0.5), flip=False,
      blur=False, momentum_teacher=0.99, warmup_teacher_temp=0.04, teacher_temp=0.04)
  c.label_smoothing = 0.0
  c.optimizer.weight_decay = 0.04
  c.optimizer.grad_clip_norm = 3.0   # the paper's clip_grad
  return c
