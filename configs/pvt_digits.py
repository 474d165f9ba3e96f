"""A tiny PVT v2 on the embedded UCI digits.

  python -m vitjax.main --config=configs/pvt_digits.py --workdir=/tmp/pvt_digits

16x16 input -> overlapping patch embedding k3 s2 -> 8x8 map (keys / values
reduced 2x2 -> 4x4) -> k3 s2 -> 4x4 map (full attention). Arg 'v1' trains
the PVT v1 of the same shape (non-overlapping 2x2 patches, position
embeddings, class token).
"""

from vitjax.config import digits_recipe


def get_config(arg=None):
  c = digits_recipe("pvt_tiny" if arg == "v1" else "pvt_v2_b0", drop_path_rate=0.1,
                    **({"image_size": 16} if arg == "v1" else {}))
  # Tuples are not in model_config's scalar fields; set them so they can be overridden too.
  c.model.embed_dims = (32, 64)
  c.model.depths = (2, 2)
  c.model.num_heads = (1, 2)
  c.model.mlp_ratios = (4, 4)
  c.model.sr_ratios = (2, 1)
  if arg == "v1":
    c.model.patch_sizes = (2, 2)
  else:
    c.model.patch_sizes = (3, 3)
    c.model.strides = (2, 2)
  return c
