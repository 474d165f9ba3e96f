"""SimMIM pretraining of a small ViT on the embedded UCI digits (labels unused).

  python -m vitjax.main --config=configs/simmim_digits.py --workdir=/tmp/simmim_digits

16x16 input, patch 4 -> 4x4 patches; the encoder is configs/quickstart.py's
ViT (width 64, 4 blocks, as configs/mae_digits.py's), so the result
fine-tunes it with
  python -m vitjax.main --config=configs/quickstart.py --workdir=/tmp/simmim_ft \
      --config.init_from.checkpoint=/tmp/simmim_digits
Mask blocks of 4 px (one patch; 16 blocks, 10 masked at ratio 0.6), a linear
head predicting the 4x4x3 pixels of every patch, L1 on the masked pixels.
The eval metric is that L1 on the 360 test digits (fixed masks). Measured
(2 shared CPU cores, load ~27, experiments/ssl_digits.md): 660 steps in 308 s
wall / 112 CPU s, eval L1 0.314; frozen class-token kNN 0.522 (random init
0.647), mean-token kNN 0.617 (0.650): NOT better than random init; fine-tuned
0.978 vs 0.989 from scratch.
"""

from vitjax.config import digits_recipe


def get_config(arg=None):
  del arg
  c = digits_recipe("simmim_vit_quickstart", num_epochs=60, learning_rate=1e-3,
                    mask_patch_size=4, mask_ratio=0.6)
  c.task = "simmim"
  c.task_kwargs.norm_pix_loss = False   # stated so that it can be overridden
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
