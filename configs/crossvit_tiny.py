"""CrossViT-Ti on ImageNet-1k at 240x240 (Chen et al. 2021, Sec. 4.1): the
DeiT recipe the CrossViT code inherits (AdamW, weight decay 0.05, 300 epochs,
cosine decay, label smoothing 0.1; 8 GPUs x 256 images, lr 5e-4 per 512 images
scaled linearly: 2e-3 at 2048) with DeiT's augmentation (vitjax.config.DEIT_AUGMENT: RandAugment (2, 9),
Mixup 0.8, CutMix 1.0, random erasing 0.25).
Args: 'tiny' (default), '9', '15', '18', '9_dagger', '15_dagger', '18_dagger'.

  python -m vitjax.main --config=configs/crossvit_tiny.py:15_dagger --workdir=...
"""

from vitjax.config import DEIT_AUGMENT, imagenet_recipe
from vitjax.errors import UserError

ARGS = ("tiny", "small", "base", "9", "15", "18", "9_dagger", "15_dagger", "18_dagger")


def get_config(arg=None):
  arg = arg or "tiny"
  if arg not in ARGS:
    raise UserError(f"config arg {arg!r}: use one of {', '.join(ARGS)}.")
  c = imagenet_recipe(f"crossvit_{arg}_240", image_size=240, batch_size=2048,
                      learning_rate=2e-3, weight_decay=0.05, drop_path_rate=0.1)
  c.augment.update(DEIT_AUGMENT)
  return c
