"""DeiT-style distillation on the embedded UCI digits: the quickstart ViT
with a distillation token, taught by a CNN (the DeiT paper's claim at small
scale; experiments/deit_distill_digits.py runs the comparison).

  python -m vitjax.main --config=configs/resnet_digits.py --workdir=/tmp/teacher
  python -m vitjax.main --config=configs/deit_digits.py:hard --workdir=/tmp/deit_hard \
      --config.task_kwargs.teacher=/tmp/teacher

Args: 'hard' (default; DeiT hard-label distillation), 'soft' (KL at
temperature 3, alpha 0.5) or 'none' (same model and steps, labels only).
"""

from vitjax.config import digits_recipe
from vitjax.errors import UserError
from vitjax.tasks.distillation import distillation_kwargs


def get_config(arg=None):
  arg = arg or "hard"
  if arg not in ("hard", "soft", "none"):
    raise UserError(f"config arg {arg!r}: use 'hard', 'soft' or 'none'.")
  c = digits_recipe("vit_quickstart", num_epochs=40, hidden_size=64, mlp_dim=128,
                    drop_path_rate=0.1, distilled=True)
  c.optimizer.warmup_steps = 100
  c.task = "distillation"
  c.task_kwargs = distillation_kwargs(teacher="", kind=arg,
                                      temperature=3.0 if arg == "soft" else 1.0)
  return c
