"""DeiT-base on ImageNet-1k (Touvron et al. 2021).

  python -m vitjax.main --config=configs/deit_base.py --workdir=gs://BUCKET/deit_base
  python -m vitjax.main --config=configs/deit_base.py:distilled ...   # the distillation-token model

Hardware: 8 GPUs / a TPU v3-32, 300 epochs. Published top-1: DeiT-Ti 72.2,
DeiT-S 79.8, DeiT-B 81.8, with the paper's augmentation, set here
(vitjax.config.DEIT_AUGMENT: RandAugment (2, 9), Mixup 0.8, CutMix 1.0, random
erasing 0.25); its repeated augmentation is not in vitjax.
"""

from vitjax.config import DEIT_AUGMENT, deit_recipe


def get_config(arg=None):
  """arg: None (DeiT) or 'distilled' (DeiT with the distillation token)."""
  tag = "_distilled" if arg == "distilled" else ""
  c = deit_recipe(f"deit_base{tag}_patch16_224", drop_path_rate=0.1)
  c.augment.update(DEIT_AUGMENT)
  return c
