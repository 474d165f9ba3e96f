"""Swin-T on ImageNet-1k (Liu et al. 2021, Sec. 4.1): AdamW, 300 epochs, batch
1024, lr 1e-3 (cosine, 20 warmup epochs, to 1e-5), weight decay 0.05,
label smoothing 0.1, stochastic depth 0.2, gradient clipping 5.0, 224x224.
Arg 'v2': Swin-V2-T at 256x256 with window 8 (same recipe, Liu et al. 2022).
(RandAugment / Mixup / CutMix / random erasing of the paper are not in
vitjax's input pipeline.)
"""

from vitjax.config import default_config, model_config
from vitjax.errors import UserError


def get_config(arg=None):
  if arg not in (None, "v1", "v2"):
    raise UserError(f"config arg {arg!r}: use 'v1' (default) or 'v2'.")
  v2 = arg == "v2"
  c = default_config()
  c.model_name = "swinv2_tiny_window8_256" if v2 else "swin_tiny_patch4_window7_224"
  c.model = model_config(c.model_name, drop_path_rate=0.2)
  c.dataset.name = "imagenet2012"
  c.dataset.eval_split = "validation"
  c.input.image_size = 256 if v2 else 224
  c.input.eval_resize = 292 if v2 else 256
  c.input.mean = (0.485, 0.456, 0.406)
  c.input.std = (0.229, 0.224, 0.225)
  c.batch_size = 1024
  c.eval_batch_size = 1000
  c.num_epochs = 300
  steps_per_epoch = 1_281_167 // c.batch_size
  c.optimizer.update(name="adamw", learning_rate=1e-3, weight_decay=0.05,
                     warmup_steps=20 * steps_per_epoch, schedule="cosine",
                     end_learning_rate=1e-5, grad_clip_norm=5.0)
  c.label_smoothing = 0.1
  c.checkpoint_every_steps = 2000
  return c
