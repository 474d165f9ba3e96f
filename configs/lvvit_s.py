"""LV-ViT-S on ImageNet-1k with token labeling (Jiang et al. 2021; recipe of
the official repository's README command and main.py defaults): AdamW, lr
1.6e-3, batch 1024, weight decay 0.05, 300 epochs, 5 warmup epochs, cosine to
1e-5, label smoothing 0.1, stochastic depth 0.1, no gradient clipping, EMA
0.99992, MixToken, dense weight 0.5 (paper Sec. 3.2's beta; main.py's default
flag is 1.0).

  python -m vitjax.main --config=configs/lvvit_s.py --workdir=/tmp/lvvit_s \
      --config.task_kwargs.teacher_checkpoint=/path/to/teacher_workdir

Without a teacher checkpoint every token is labelled with its image's label
(plain LV-ViT training with MixToken). The paper's machine annotator is an
NFNet-F6 whose stored top-5 score maps vitjax does not read; any vitjax model
trained on the same classes can be the teacher instead (run inside the train
step, see vitjax/tasks/token_labeling.py). Arg 'm': LV-ViT-M (stochastic depth
0.2). RandAugment (2, 9) and random erasing 0.25 as in the paper (no Mixup /
CutMix: MixToken takes their place); label maps read from a file
(`task_kwargs.label_maps`) follow the crop and flip, not RandAugment's
geometric ops.
"""

from vitjax.config import imagenet_recipe
from vitjax.errors import UserError


def get_config(arg=None):
  if arg not in (None, "s", "m"):
    raise UserError(f"config arg {arg!r}: use 's' (default) or 'm'.")
  name = "lvvit_m" if arg == "m" else "lvvit_s"
  c = imagenet_recipe(name, learning_rate=1.6e-3, weight_decay=0.05, warmup_epochs=5,
                      label_smoothing=0.1, drop_path_rate=0.2 if arg == "m" else 0.1)
  c.optimizer.update(grad_clip_norm=0.0, end_learning_rate=1e-5)
  c.input.eval_resize = 248 if arg != "m" else 224  # official crop_pct 0.9 (S) / 1.0 (M)
  c.ema_decay = 0.99992
  c.augment.update(randaugment_layers=2, randaugment_magnitude=9.0, random_erase=0.25)
  c.task = "token_labeling"
  c.task_kwargs.dense_weight = 0.5
  c.task_kwargs.mix_token = True
  c.task_kwargs.mix_alpha = 1.0
  c.task_kwargs.teacher_checkpoint = ""
  return c
