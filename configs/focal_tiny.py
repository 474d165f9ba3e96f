"""Focal-T on ImageNet-1k (Yang et al. 2021, Sec. 4.1; the released config):
AdamW, 300 epochs, batch 1024, lr 1e-3 (5e-4 per 512 images, cosine to 1e-5,
20 warmup epochs), weight decay 0.05, label smoothing 0.1, gradient clipping
5.0, stochastic depth 0.2, 224x224, and Swin's (that is DeiT's augmentation (vitjax.config.DEIT_AUGMENT: RandAugment (2, 9),
Mixup 0.8, CutMix 1.0, random erasing 0.25)).
Arg 'lrf': the large-receptive-field variant (focal level 3) with the same recipe.

  python -m vitjax.main --config=configs/focal_tiny.py --workdir=/tmp/focal_tiny
"""

from vitjax.config import DEIT_AUGMENT, imagenet_recipe
from vitjax.errors import UserError


def get_config(arg=None):
  arg = arg or "srf"
  if arg not in ("srf", "lrf"):
    raise UserError(f"config arg {arg!r}: use 'srf' (default) or 'lrf'.")
  c = imagenet_recipe(f"focal_tiny_{arg}", batch_size=1024, learning_rate=1e-3,
                      weight_decay=0.05, warmup_epochs=20, drop_path_rate=0.2)
  c.optimizer.end_learning_rate = 1e-5
  c.augment.update(DEIT_AUGMENT)
  return c
