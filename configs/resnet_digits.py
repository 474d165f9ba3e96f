"""A small ResNet-18 on the embedded UCI digits: the CNN baseline next to
configs/quickstart.py (same data, same 16x16 input).

  python -m vitjax.main --config=configs/resnet_digits.py --workdir=/tmp/resnet_digits

ResNet-18 layout with the small-image stem (3x3/1 conv, no max-pool) and a
quarter of the width (16-32-64-128 channels, ~0.7M params); AdamW with
cosine decay. Hardware: 2 CPU cores.
"""

from vitjax.config import default_config, model_config


def get_config(arg=None):
  del arg
  c = default_config()
  c.model_name = "resnet18"
  c.model = model_config(c.model_name, width=16, small_stem=True)
  c.dataset.name = "digits"
  c.input.image_size = 16
  c.input.train_augment = "random_crop"
  c.input.crop_padding = 1         # a 1-pixel shift of the native 8x8 digit
  c.input.flip = False              # a flipped digit is another digit (or none)
  c.batch_size = 128
  c.eval_batch_size = 360
  c.num_epochs = 30
  c.optimizer.learning_rate = 2e-3
  c.optimizer.weight_decay = 0.05
  c.optimizer.warmup_steps = 50
  c.label_smoothing = 0.1
  c.log_every_steps = 50
  c.eval_every_steps = 100
  c.checkpoint_every_steps = 200
  c.progress_bar = False
  return c
