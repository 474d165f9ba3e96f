"""ConvNeXt-T on ImageNet-1k, the paper's recipe (Liu et al. 2022, Table 5 /
Appendix A.1): AdamW, lr 4e-3 at batch 4096, weight decay 0.05, 300 epochs
with 20 warmup epochs and cosine decay, label smoothing 0.1, stochastic
depth 0.1 (0.4 for ConvNeXt-S), 224x224, ImageNet mean/std.

Not reproduced here (vitjax has no such options yet): Mixup/CutMix,
RandAugment, random erasing, EMA of the weights; expect lower accuracy than
the paper's 82.1% without them.

  python -m vitjax.main --config=configs/convnext_tiny.py --workdir=...
"""

from vitjax.config import default_config, model_config


def get_config(arg=None):
  del arg
  c = default_config()
  c.model_name = "convnext_tiny"
  c.model = model_config(c.model_name, drop_path_rate=0.1)
  c.dataset.name = "imagenet2012"
  c.dataset.eval_split = "validation"
  c.input.image_size = 224
  c.input.eval_resize = 256
  c.input.mean = (0.485, 0.456, 0.406)
  c.input.std = (0.229, 0.224, 0.225)
  c.batch_size = 4096
  c.eval_batch_size = 1000
  c.num_epochs = 300
  steps_per_epoch = 1_281_167 // c.batch_size
  c.optimizer.update(name="adamw", learning_rate=4e-3, weight_decay=0.05,
                     warmup_steps=20 * steps_per_epoch, schedule="cosine",
                     grad_clip_norm=0.0)
  c.label_smoothing = 0.1
  c.checkpoint_every_steps = 2000
  return c
