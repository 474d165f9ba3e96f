"""NAT-Mini on ImageNet-1k (Hassani et al. 2022, Sec. 4.1 and the released
configs): AdamW, lr 1e-3 at batch 1024, 300 epochs, 20 warmup epochs, cosine
decay, weight decay 0.05, label smoothing 0.1, stochastic depth 0.2,
224x224, and Swin's (that is DeiT's augmentation (vitjax.config.DEIT_AUGMENT: RandAugment (2, 9),
Mixup 0.8, CutMix 1.0, random erasing 0.25)).
Arg 'dinat': DiNAT-Mini with the same recipe (Hassani & Shi 2022).

  python -m vitjax.main --config=configs/nat_mini.py:dinat --workdir=...
"""

from vitjax.config import DEIT_AUGMENT, imagenet_recipe
from vitjax.errors import UserError


def get_config(arg=None):
  if arg not in (None, "nat", "dinat"):
    raise UserError(f"config arg {arg!r}: use 'nat' (default) or 'dinat'.")
  name = "dinat_mini" if arg == "dinat" else "nat_mini"
  c = imagenet_recipe(name, warmup_epochs=20, drop_path_rate=0.2)
  c.optimizer.end_learning_rate = 5e-6
  c.augment.update(DEIT_AUGMENT)
  return c
