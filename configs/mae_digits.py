"""MAE pretraining of a small ViT on the embedded UCI digits (labels unused).

  python -m vitjax.main --config=configs/mae_digits.py --workdir=/tmp/mae_digits

16x16 input, patch 4 -> 16 patches, 4 of them visible (mask ratio 0.75),
per-patch normalised pixel targets (the paper's best setting; in a small
sweep on the digits, 60 epochs, seed 0: kNN 0.819 with them at lr 1e-3, 0.761
without at lr 2e-3, 0.814 without at mask ratio 0.5 - not a controlled
comparison); the
encoder is configs/quickstart.py's ViT (width 64, 4 blocks), so the result
fine-tunes it with
  python -m vitjax.main --config=configs/quickstart.py --workdir=/tmp/mae_ft \
      --config.init_from.checkpoint=/tmp/mae_digits
and `python -m vitjax.tools.probe --workdir=/tmp/mae_digits --method=knn`
probes the frozen encoder. The eval metric is the reconstruction loss of the
masked patches of the 360 test digits. Measured (2 shared CPU cores,
experiments/ssl_digits.md): 660 steps in 268 s, eval loss 0.572; frozen
class-token kNN 0.819 (random init 0.672), linear probe 0.928 (0.903).
"""

from vitjax.config import digits_recipe


def get_config(arg=None):
  del arg
  c = digits_recipe("mae_vit_quickstart", num_epochs=60, learning_rate=1e-3,
                    mask_ratio=0.75, norm_pix_loss=True)
  c.task = "mae"
  c.label_smoothing = 0.0
  c.optimizer.b2 = 0.95          # the MAE paper's AdamW betas (0.9, 0.95)
  c.optimizer.grad_clip_norm = 0.0
  return c
