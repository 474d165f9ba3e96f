"""A small ResNet-18 on the embedded UCI digits: the CNN baseline next to
configs/quickstart.py (same data, same 16x16 input).

  python -m vitjax.main --config=configs/resnet_digits.py --workdir=/tmp/resnet_digits

ResNet-18 layout with the small-image stem (3x3/1 conv, no max-pool) and a
quarter of the width (16-32-64-128 channels, ~0.7M params); AdamW with
cosine decay. Hardware: 2 CPU cores.
"""

from vitjax.config import digits_recipe


def get_config(arg=None):
  del arg
  c = digits_recipe("resnet18", num_epochs=30, width=16, small_stem=True)
  c.eval_every_steps = 100
  c.checkpoint_every_steps = 200
  return c
