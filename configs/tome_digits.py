"""The quickstart ViT on the digits at 32x32 (patch 4 -> 64 tokens + class
token), the sequence token merging (ToMe) is measured on; at 16x16 the
quickstart has only 16 tokens, too few for merging to pay.

  python -m vitjax.main --config=configs/tome_digits.py --workdir=/tmp/tome_digits
  python experiments/compression_digits.py tome --workdir=/tmp/tome_digits

Measured in experiments/compression_digits.md.
"""

from vitjax.config import default_config, model_config


def get_config(arg=None):
  del arg
  c = default_config()
  c.model_name = "vit_quickstart"
  c.model = model_config(c.model_name, hidden_size=64, mlp_dim=128, drop_path_rate=0.1)
  c.dataset.name = "digits"
  c.input.image_size = 32          # the 8x8 digit upsampled 4x
  c.input.train_augment = "random_crop"
  c.input.crop_padding = 4         # a 1-pixel shift of the native 8x8 digit
  c.input.flip = False
  c.batch_size = 128
  c.eval_batch_size = 360
  c.num_epochs = 60
  c.optimizer.learning_rate = 2e-3
  c.optimizer.weight_decay = 0.05
  c.optimizer.warmup_steps = 100
  c.label_smoothing = 0.1
  c.log_every_steps = 50
  c.eval_every_steps = 250
  c.checkpoint_every_steps = 200
  return c
