"""EfficientNet B0-B3 on ImageNet-1k at each model's own resolution (Tan & Le
2019: 224 / 240 / 260 / 300). The paper's RMSProp recipe (batch 4096, lr
0.256 per 4096, decay 0.97 every 2.4 epochs, 350 epochs) is replaced by the
common AdamW + cosine recipe vitjax uses for every backbone (timm-style),
lr 2e-3 at batch 1024, weight decay 0.05, label smoothing 0.1.
Args: 'b0' (default) .. 'b3'.

  python -m vitjax.main --config=configs/efficientnet_b0.py:b2 --workdir=...
"""

from vitjax.config import imagenet_recipe
from vitjax.errors import UserError

RESOLUTION = {"b0": 224, "b1": 240, "b2": 260, "b3": 300}


def get_config(arg=None):
  arg = arg or "b0"
  if arg not in RESOLUTION:
    raise UserError(f"config arg {arg!r}: use one of {sorted(RESOLUTION)}.")
  return imagenet_recipe(f"efficientnet_{arg}", image_size=RESOLUTION[arg],
                         learning_rate=2e-3, num_epochs=350)
