"""CvT-13 on ImageNet-1k (Wu et al. 2021, Sec. 4.1): AdamW, weight decay 0.05
(0.1 for CvT-21 / W24), batch 2048, 300 epochs, cosine decay, label
smoothing 0.1, 224x224; lr 2.5e-4 per 256 images linearly scaled (2e-3 here);
DeiT's augmentation (vitjax.config.DEIT_AUGMENT: RandAugment (2, 9),
Mixup 0.8, CutMix 1.0, random erasing 0.25).
Args: '13' (default), '21', 'w24'.

  python -m vitjax.main --config=configs/cvt_13.py:21 --workdir=...
"""

from vitjax.config import DEIT_AUGMENT, imagenet_recipe
from vitjax.errors import UserError


def get_config(arg=None):
  arg = arg or "13"
  if arg not in ("13", "21", "w24"):
    raise UserError(f"config arg {arg!r}: use '13', '21' or 'w24'.")
  c = imagenet_recipe(f"cvt_{arg}", batch_size=2048, learning_rate=2e-3,
                      weight_decay=0.05 if arg == "13" else 0.1,
                      drop_path_rate=0.1 if arg != "w24" else 0.3)
  c.augment.update(DEIT_AUGMENT)
  return c
