"""A tiny PVT v2 on the embedded UCI digits.

  python -m vitjax.main --config=configs/pvt_digits.py --workdir=/tmp/pvt_digits

16x16 input -> overlapping patch embedding k3 s2 -> 8x8 map (keys / values
reduced 2x2 -> 4x4) -> k3 s2 -> 4x4 map (full attention). Arg 'v1' trains
the PVT v1 of the same shape (non-overlapping 2x2 patches, position
embeddings, class token).
"""

from vitjax.config import default_config, model_config


def get_config(arg=None):
  c = default_config()
  c.model_name = "pvt_tiny" if arg == "v1" else "pvt_v2_b0"
  c.model = model_config(c.model_name, drop_path_rate=0.1,
                         **({"image_size": 16} if arg == "v1" else {}))
  # Tuples are not in model_config's scalar fields; set them so they can be overridden too.
  c.model.embed_dims = (32, 64)
  c.model.depths = (2, 2)
  c.model.num_heads = (1, 2)
  c.model.mlp_ratios = (4, 4)
  c.model.sr_ratios = (2, 1)
  if arg == "v1":
    c.model.patch_sizes = (2, 2)
  else:
    c.model.patch_sizes = (3, 3)
    c.model.strides = (2, 2)
  c.dataset.name = "digits"
  c.input.image_size = 16
  c.input.train_augment = "random_crop"
  c.input.crop_padding = 1
  c.input.flip = False
  c.batch_size = 128
  c.eval_batch_size = 360
  c.num_epochs = 60
  c.optimizer.learning_rate = 2e-3
  c.optimizer.weight_decay = 0.05
  c.optimizer.warmup_steps = 50
  c.label_smoothing = 0.1
  c.log_every_steps = 50
  c.eval_every_steps = 250
  c.checkpoint_every_steps = 250
  return c
