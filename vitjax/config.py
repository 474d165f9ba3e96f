"""The default experiment config and its validation.

Every config file in `configs/` starts from `default_config()` and changes
fields; `validate_config` refuses keys the defaults do not have (a typo would
otherwise be silently ignored) and values that cannot work, before anything
is compiled.
"""

import ml_collections

from vitjax.errors import UserError

# Sub-dicts whose keys are free-form (passed through to a model / task).
_FREE_FORM = ("model", "task_kwargs")


def default_config() -> ml_collections.ConfigDict:
  """All fields a run reads, with their defaults."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.task = "classification"
  c.task_kwargs = ml_collections.ConfigDict()

  # Model: a registry name and the keyword overrides passed to create_model.
  # num_classes is filled in from the dataset when not given.
  c.model_name = "vit_quickstart"
  c.model = ml_collections.ConfigDict()

  c.dataset = ml_collections.ConfigDict(dict(
      name="digits",          # 'digits' | 'imagefolder' | a TFDS name
      data_dir=None,          # TFDS data_dir, or the ImageFolder root
      train_split="train",
      eval_split="test",
      shuffle_buffer=10_000,
      corrupt_images="skip",  # 'skip' (skip and count) | 'error'
  ))
  c.input = ml_collections.ConfigDict(dict(
      image_size=224,
      train_augment="inception_crop",  # 'inception_crop' | 'random_crop' | 'none'
      crop_scale=(0.08, 1.0),
      crop_padding=4,
      flip=True,
      eval_resize=None,
      mean=(0.5, 0.5, 0.5),
      std=(0.5, 0.5, 0.5),
  ))

  c.batch_size = 128          # global, over all devices and hosts
  c.eval_batch_size = 256
  c.num_epochs = 10.0         # used when total_steps == 0
  c.total_steps = 0

  c.optimizer = ml_collections.ConfigDict(dict(
      name="adamw",           # 'adamw' | 'sgd'
      learning_rate=1e-3,     # peak
      weight_decay=1e-4,      # decoupled (AdamW) / L2 (SGD); never on norms, biases, pos/cls
      b1=0.9, b2=0.999, eps=1e-8,
      momentum=0.9, nesterov=False,   # sgd
      schedule="cosine",      # 'cosine' | 'linear' | 'constant'
      warmup_steps=0,
      end_learning_rate=0.0,
      grad_clip_norm=1.0,     # 0 disables
  ))
  c.label_smoothing = 0.0

  # Fine-tuning: start from a checkpoint and replace the head.
  c.init_from = ml_collections.ConfigDict(dict(
      checkpoint="",          # vitjax workdir / checkpoint dir, or a .safetensors file
      source="vitjax",        # 'vitjax' | 'hf' | 'timm'
      reinit_head=True,       # a new head for the new classes (always when shapes differ)
  ))

  c.log_every_steps = 50
  c.eval_every_steps = 0      # 0: at the end of every epoch
  c.checkpoint_every_steps = 500
  c.keep_checkpoints = 3
  c.progress_bar = True
  return c


def _check_keys(cfg, ref, path=""):
  for key in cfg.keys():
    full = f"{path}{key}"
    if key not in ref:
      import difflib  # pylint: disable=g-import-not-at-top
      close = difflib.get_close_matches(key, list(ref.keys()), n=1)
      hint = f" Did you mean {path}{close[0]}?" if close else ""
      raise UserError(f"Unknown config key '{full}'.{hint} The known keys are in "
                      "vitjax/config.py:default_config().")
    if key in _FREE_FORM and not path:
      continue
    if isinstance(ref[key], ml_collections.ConfigDict) and isinstance(
        cfg[key], ml_collections.ConfigDict):
      _check_keys(cfg[key], ref[key], full + ".")


def validate_config(config, num_devices: int, num_processes: int = 1):
  """Raises UserError for unknown keys and impossible values."""
  _check_keys(config, default_config())
  for name in ("batch_size", "eval_batch_size"):
    b = config[name]
    if b <= 0 or b % num_devices:
      lo = max(num_devices, b // num_devices * num_devices)
      raise UserError(
          f"config.{name}={b} is not divisible by the {num_devices} devices "
          f"({num_processes} process(es)). Use a multiple of {num_devices}, e.g. "
          f"--config.{name}={lo} or {lo + num_devices}.")
  if config.optimizer.name not in ("adamw", "sgd"):
    raise UserError(f"config.optimizer.name={config.optimizer.name!r}: use 'adamw' or 'sgd'.")
  if config.optimizer.schedule not in ("cosine", "linear", "constant"):
    raise UserError(f"config.optimizer.schedule={config.optimizer.schedule!r}: use "
                    "'cosine', 'linear' or 'constant'.")
  if config.init_from.source not in ("vitjax", "hf", "timm"):
    raise UserError(f"config.init_from.source={config.init_from.source!r}: use "
                    "'vitjax', 'hf' or 'timm'.")
