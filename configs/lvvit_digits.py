"""A tiny LV-ViT on the embedded UCI digits, with MixToken and token labeling.

  python -m vitjax.main --config=configs/lvvit_digits.py --workdir=/tmp/lvvit_digits

16x16 input -> conv stem (7x7/2, 3x3, 3x3 at width 16) -> 2x2 projection:
a 4x4 token grid, 4 blocks of width 64 with residual scaling 2. By default
no teacher is needed: every token's target is its image's label (MixToken
still mixes the class target). To label tokens with a machine annotator,
train any vitjax model on digits first and point the task at its workdir:

  python -m vitjax.main --config=configs/quickstart.py --workdir=/tmp/vit_digits
  python -m vitjax.main --config=configs/lvvit_digits.py --workdir=/tmp/lvvit_tl \
      --config.task_kwargs.teacher_checkpoint=/tmp/vit_digits

(the quickstart ViT has 4x4-pixel patches: its 4x4 score map is the student's grid).
Or annotate once and read the score maps from a file (LV-ViT's label maps):

  python -m vitjax.tools.label_maps --teacher=/tmp/vit_digits --out=/tmp/digit_maps
  python -m vitjax.main --config=configs/lvvit_digits.py --workdir=/tmp/lvvit_maps \
      --config.task_kwargs.label_maps=/tmp/digit_maps --config.input.return_geometry=True
"""

from vitjax.config import digits_recipe


def get_config(arg=None):
  del arg
  c = digits_recipe("lvvit_t", image_size=16, drop_path_rate=0.1, patch_size=4,
                    stem_dim=16, hidden_size=64, depth=4, num_heads=4, skip_lam=2.0)
  c.task = "token_labeling"
  c.task_kwargs.dense_weight = 0.5
  c.task_kwargs.mix_token = True
  c.task_kwargs.mix_alpha = 1.0
  c.task_kwargs.teacher_checkpoint = ""
  c.task_kwargs.teacher_topk = 0
  c.task_kwargs.label_maps = ""  # or score maps from a file (needs input.return_geometry)
  return c
