"""A small ViT on the embedded UCI digits: the README's main command.

  python -m vitjax.main --config=configs/quickstart.py --workdir=/tmp/vitjax_quickstart

Hardware: 2 CPU cores. Expected: >= 97% test accuracy on the 360 held-out
digits in under 3 minutes, compile included (see README for measured figures).
Arg 'resnet_size': width 128, MLP 384 (0.67M parameters, about the size of
configs/resnet_digits.py's ResNet), for experiments/cnn_vs_vit.py.
"""

from vitjax.config import default_config, model_config


def get_config(arg=None):
  if arg not in (None, "resnet_size"):
    from vitjax.errors import UserError  # pylint: disable=g-import-not-at-top
    raise UserError(f"configs/quickstart.py: unknown arg {arg!r}; use none or 'resnet_size'.")
  width, mlp = (128, 384) if arg == "resnet_size" else (64, 128)
  c = default_config()
  c.model_name = "vit_quickstart"   # 16x16 input, patch 4 -> 16 tokens + class token
  c.model = model_config(c.model_name, hidden_size=width, mlp_dim=mlp, drop_path_rate=0.1)
  c.dataset.name = "digits"
  c.input.image_size = 16
  c.input.train_augment = "random_crop"
  c.input.crop_padding = 1         # a 1-pixel shift of the native 8x8 digit
  c.input.flip = False              # a flipped digit is another digit (or none)
  c.batch_size = 128
  c.eval_batch_size = 360
  c.num_epochs = 120
  c.optimizer.learning_rate = 2e-3
  c.optimizer.weight_decay = 0.05
  c.optimizer.warmup_steps = 100
  c.label_smoothing = 0.1
  c.log_every_steps = 50
  c.eval_every_steps = 250
  c.checkpoint_every_steps = 200
  return c
