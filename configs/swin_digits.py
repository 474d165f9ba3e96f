"""A tiny Swin on the embedded UCI digits.

  python -m vitjax.main --config=configs/swin_digits.py --workdir=/tmp/swin_digits

16x16 input, patch 2 -> 8x8 map (window 4, shifted by 2 in every second
block) -> patch merging -> 4x4 map (one window, no shift). Arg 'v2' trains
the Swin v2 variant of the same shape.
"""

from vitjax.config import digits_recipe


def get_config(arg=None):
  name = "swinv2_tiny_window8_256" if arg == "v2" else "swin_tiny_patch4_window7_224"
  c = digits_recipe(name, patch_size=2, embed_dim=32, window_size=4, mlp_ratio=2.0,
                    drop_path_rate=0.1)
  # Tuples are not in model_config's scalar fields; set them so they can be overridden too.
  c.model.depths = (2, 2)
  c.model.num_heads = (2, 4)
  c.model.pretrained_window_sizes = (0, 0)
  return c
