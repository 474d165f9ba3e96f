"""ConvNeXt-T on ImageNet-1k, the paper's recipe (Liu et al. 2022, Table 5 /
Appendix A.1): AdamW, lr 4e-3 at batch 4096, weight decay 0.05, 300 epochs
with 20 warmup epochs and cosine decay, label smoothing 0.1, stochastic
depth 0.1 (0.4 for ConvNeXt-S), 224x224, ImageNet mean/std, and the paper's
DeiT's augmentation (vitjax.config.DEIT_AUGMENT: RandAugment (2, 9),
Mixup 0.8, CutMix 1.0, random erasing 0.25).
The paper's EMA of the weights (0.9999) is off here: add
--config.ema_decay=0.9999 for it. Paper: 82.1% top-1 (no vitjax run measured).

  python -m vitjax.main --config=configs/convnext_tiny.py --workdir=...
"""

from vitjax.config import DEIT_AUGMENT, imagenet_recipe


def get_config(arg=None):
  del arg
  c = imagenet_recipe("convnext_tiny", batch_size=4096, learning_rate=4e-3, warmup_epochs=20,
                      drop_path_rate=0.1)
  c.optimizer.grad_clip_norm = 0.0  # no clipping in the paper's recipe
  c.augment.update(DEIT_AUGMENT)
  return c
