"""A tiny CrossViT on the embedded UCI digits.

  python -m vitjax.main --config=configs/crossvit_digits.py --workdir=/tmp/crossvit_digits

24x24 input. Small-patch branch: 3 px patches of the 24 px image -> 8x8
tokens, width 32; large-patch branch: the image bicubically resized to 12 px
(img_scale 0.5), 3 px patches -> 4x4 tokens (6 px of the original each),
width 64. Two multi-scale encoders (1 + 2 blocks, one cross-attention
fusion each); the two heads' logits are averaged. Measured (seed 0, 2 CPU
cores shared with other jobs, load ~15): 98.1% test accuracy on the 360
held-out digits after 660 steps (60 epochs); 869 s wall, 168 s CPU, compile
included.
"""

from vitjax.config import digits_recipe

# Tuple fields, needed at construction (the size check) and set again below so
# that they can be overridden on the command line (model_config keeps scalars).
SHAPE = dict(img_scale=(1.0, 0.5), patch_sizes=(3, 3), embed_dims=(32, 64), num_heads=(2, 4),
             mlp_ratios=(2.0, 2.0), branch_depths=(1, 2))


def get_config(arg=None):
  del arg
  c = digits_recipe("crossvit_tiny_240", image_size=24, num_epochs=60, drop_path_rate=0.1,
                    num_blocks=2, **SHAPE)
  c.model.image_size = 24
  for k, v in SHAPE.items():
    c.model[k] = v
  return c
