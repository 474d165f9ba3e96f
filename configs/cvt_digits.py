"""A tiny CvT on the embedded UCI digits.

  python -m vitjax.main --config=configs/cvt_digits.py --workdir=/tmp/cvt_digits

16x16 input -> convolutional token embedding (3x3, stride 2) -> 8x8 map with
depthwise-separable q/k/v projections (keys / values strided 2x -> 4x4) ->
embedding 3x3 stride 2 -> 4x4 map plus the class token (last stage only).
No position embedding, as in the paper. Hardware: 2 CPU cores.
"""

from vitjax.config import digits_recipe


def get_config(arg=None):
  del arg
  c = digits_recipe("cvt_13", image_size=16, num_epochs=60, drop_path_rate=0.1)
  # Tuples are not in model_config's scalar fields; set them so they can be overridden too.
  c.model.embed_dims = (32, 64)
  c.model.depths = (1, 2)
  c.model.num_heads = (1, 2)
  c.model.patch_sizes = (3, 3)
  c.model.patch_strides = (2, 2)
  c.model.patch_paddings = (1, 1)
  c.model.mlp_ratio = 2.0
  return c
