"""MobileViT-S on ImageNet-1k (Mehta & Rastegari 2022, Sec. 4.1): AdamW,
weight decay 0.01, 300 epochs, 3k warmup iterations then cosine from 2e-3
to 2e-4, label smoothing 0.1, batch 1024, 256x256 input (the paper's
multi-scale sampler is not used; fixed 256). Arg 'xxs' / 'xs' / 's'
(default), or 'v2' for MobileViT v2 x1.0 (Mehta & Rastegari 2023: weight
decay 0.05, lr 2e-3, 20k warmup iterations).

  python -m vitjax.main --config=configs/mobilevit_s.py:xs --workdir=...
"""

from vitjax.config import imagenet_recipe
from vitjax.errors import UserError


def get_config(arg=None):
  arg = arg or "s"
  if arg not in ("xxs", "xs", "s", "v2"):
    raise UserError(f"config arg {arg!r}: use 'xxs', 'xs', 's' or 'v2'.")
  v2 = arg == "v2"
  c = imagenet_recipe("mobilevitv2_100" if v2 else f"mobilevit_{arg}", image_size=256,
                      learning_rate=2e-3, weight_decay=0.05 if v2 else 0.01)
  c.optimizer.warmup_steps = 20_000 if v2 else 3_000
  c.optimizer.end_learning_rate = 0.0 if v2 else 2e-4
  return c
