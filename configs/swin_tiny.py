"""Swin-T on ImageNet-1k (Liu et al. 2021, Sec. 4.1): AdamW, 300 epochs, batch
1024, lr 1e-3 (cosine, 20 warmup epochs, to 1e-5), weight decay 0.05,
label smoothing 0.1, stochastic depth 0.2, gradient clipping 5.0, 224x224,
and the paper's DeiT's augmentation (vitjax.config.DEIT_AUGMENT: RandAugment (2, 9),
Mixup 0.8, CutMix 1.0, random erasing 0.25).
Arg 'v2': Swin-V2-T at 256x256 with window 8 (same recipe, Liu et al. 2022).
"""

from vitjax.config import DEIT_AUGMENT, imagenet_recipe
from vitjax.errors import UserError


def get_config(arg=None):
  if arg not in (None, "v1", "v2"):
    raise UserError(f"config arg {arg!r}: use 'v1' (default) or 'v2'.")
  v2 = arg == "v2"
  c = imagenet_recipe("swinv2_tiny_window8_256" if v2 else "swin_tiny_patch4_window7_224",
                      image_size=256 if v2 else 224, warmup_epochs=20, drop_path_rate=0.2)
  c.optimizer.end_learning_rate = 1e-5
  c.augment.update(DEIT_AUGMENT)
  if v2:
    c.input.eval_resize = 292  # Swin's code: int(256 / 224 * 256), rounded down
  return c
