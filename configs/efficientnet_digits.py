"""A narrow EfficientNet-B0 on the embedded UCI digits (a CNN baseline).

  python -m vitjax.main --config=configs/efficientnet_digits.py --workdir=/tmp/effnet_digits

32x32 input (the 8x8 digits upsampled 4x; B0 reduces 32x, so the last stage
is 1x1), width x0.25 of B0, half the depth. Hardware: 2 CPU cores.
"""

from vitjax.config import digits_recipe


def get_config(arg=None):
  del arg
  return digits_recipe("efficientnet_b0", image_size=32, num_epochs=40, learning_rate=3e-3,
                       width_mult=0.25, depth_mult=0.5, dropout=0.1, drop_path_rate=0.05)
