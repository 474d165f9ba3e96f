"""NAT-Mini on ImageNet-1k (Hassani et al. 2022, Sec. 4.1 and the released
configs): AdamW, lr 1e-3 at batch 1024, 300 epochs, 20 warmup epochs, cosine
decay, weight decay 0.05, label smoothing 0.1, stochastic depth 0.2,
224x224. Arg 'dinat': DiNAT-Mini with the same recipe (Hassani & Shi 2022).
(RandAugment / Mixup / CutMix / random erasing of the papers are not in
vitjax's input pipeline.)

  python -m vitjax.main --config=configs/nat_mini.py:dinat --workdir=...
"""

from vitjax.config import imagenet_recipe
from vitjax.errors import UserError


def get_config(arg=None):
  if arg not in (None, "nat", "dinat"):
    raise UserError(f"config arg {arg!r}: use 'nat' (default) or 'dinat'.")
  name = "dinat_mini" if arg == "dinat" else "nat_mini"
  c = imagenet_recipe(name, warmup_epochs=20, drop_path_rate=0.2)
  c.optimizer.end_learning_rate = 5e-6
  return c
