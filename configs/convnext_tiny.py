"""ConvNeXt-T on ImageNet-1k, the paper's recipe (Liu et al. 2022, Table 5 /
Appendix A.1): AdamW, lr 4e-3 at batch 4096, weight decay 0.05, 300 epochs
with 20 warmup epochs and cosine decay, label smoothing 0.1, stochastic
depth 0.1 (0.4 for ConvNeXt-S), 224x224, ImageNet mean/std.

Not reproduced here (vitjax has no such options yet): Mixup/CutMix,
RandAugment, random erasing, EMA of the weights; expect lower accuracy than
the paper's 82.1% without them.

  python -m vitjax.main --config=configs/convnext_tiny.py --workdir=...
"""

from vitjax.config import imagenet_recipe


def get_config(arg=None):
  del arg
  c = imagenet_recipe("convnext_tiny", batch_size=4096, learning_rate=4e-3, warmup_epochs=20,
                      drop_path_rate=0.1)
  c.optimizer.grad_clip_norm = 0.0  # no clipping in the paper's recipe
  return c
