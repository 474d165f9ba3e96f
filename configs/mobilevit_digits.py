"""A tiny MobileViT on the embedded UCI digits.

  python -m vitjax.main --config=configs/mobilevit_digits.py --workdir=/tmp/mobilevit_digits

32x32 input, patch 1 inside the MobileViT blocks (the maps of stages 2-4
are 4x4, 2x2, 1x1), the XXS widths. Arg 'v2': MobileViT v2 x0.5 with
separable (linear) self-attention, same shape. Hardware: 2 CPU cores.
"""

from vitjax.config import digits_recipe


def get_config(arg=None):
  name = "mobilevitv2_050" if arg == "v2" else "mobilevit_xxs"
  return digits_recipe(name, image_size=32, num_epochs=40, learning_rate=3e-3, patch_size=1)
