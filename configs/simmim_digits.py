"""SimMIM pretraining of a small ViT on the embedded UCI digits (labels unused).

  python -m vitjax.main --config=configs/simmim_digits.py --workdir=/tmp/simmim_digits

16x16 input, patch 4 -> 4x4 patches; the encoder is configs/quickstart.py's
ViT (width 64, 4 blocks, as configs/mae_digits.py's), so the result
fine-tunes it with
  python -m vitjax.main --config=configs/quickstart.py --workdir=/tmp/simmim_ft \
      --config.init_from.checkpoint=/tmp/simmim_digits
Mask blocks of 4 px (one patch; 16 blocks, 10 masked at ratio 0.6), a linear
head predicting the 4x4x3 pixels of every patch, L1 on the masked pixels
against per-patch normalised pixels (task_kwargs.norm_pix_loss, as MAE's
best target). The eval metric is that L1 on the 360 test digits (fixed masks).
SimMIM is probed on the mean patch token (the paper's linear probe pools
the tokens; its class token gets no loss). Sweep (seed 0, 660 steps, ~112
CPU s each, kNN k=20 class token / mean token; random init 0.647 / 0.650):
raw-pixel targets 0.522 / 0.617; normalised targets 0.633 / 0.744 (this
config); normalised, mask blocks 8 px at ratio 0.75 0.603 / 0.664;
normalised, ratio 0.8 0.600 / 0.639. Figures of this config in experiments/ssl_digits.md.
"""

from vitjax.config import digits_recipe


def get_config(arg=None):
  del arg
  c = digits_recipe("simmim_vit_quickstart", num_epochs=60, learning_rate=1e-3,
                    mask_patch_size=4, mask_ratio=0.6)
  c.task = "simmim"
  c.task_kwargs.norm_pix_loss = True   # per-patch normalised targets (see above)
  c.label_smoothing = 0.0
  # The encoder (quickstart's ViT), stated so every field can be overridden.
  c.model.patch_size = 4
  c.model.hidden_size = 64
  c.model.depth = 4
  c.model.num_heads = 4
  c.model.mlp_dim = 128
  c.model.drop_path_rate = 0.0
  c.optimizer.b2 = 0.999
  c.optimizer.grad_clip_norm = 5.0   # SimMIM's clip (paper code: 5.0)
  return c
