"""The default experiment config and its validation.

Every config file in `configs/` starts from `default_config()` and changes
fields; `validate_config` refuses keys the defaults do not have (a typo would
otherwise be silently ignored) and values that cannot work, before anything
is compiled.
"""

import ml_collections
from ml_collections.config_dict import placeholder

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
      data_dir=placeholder(str),   # TFDS data_dir, or the ImageFolder root (None: TFDS default)
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
      eval_resize=placeholder(int),  # None: resize straight to image_size
      mean=(0.5, 0.5, 0.5),
      std=(0.5, 0.5, 0.5),
      # Train batches also get `index` (the example's position in the train
      # split), `crop_box` [y0, x0, y1, x1] (relative to the source image) and
      # `flipped`: for per-example targets that must follow the augmentation
      # (token-labeling score maps from a file). Random-access sources only
      # (digits, imagefolder, TFDS prepared as ArrayRecord).
      return_geometry=False,
  ))

  c.batch_size = 128          # global, over all devices and hosts
  c.eval_batch_size = 256
  c.num_epochs = 10.0         # used when total_steps == 0
  c.total_steps = 0

  c.optimizer = ml_collections.ConfigDict(dict(
      name="adamw",           # 'adamw' | 'sgd' | 'adafactor' (factored 2nd moments)
      learning_rate=1e-3,     # peak
      weight_decay=1e-4,      # decoupled (AdamW) / L2 (SGD); never on norms, biases, pos/cls
      b1=0.9, b2=0.999, eps=1e-8,
      momentum=0.9, nesterov=False,   # sgd
      state_dtype="",         # '' | 'bfloat16': the first moments' dtype (adamw, adafactor)
      schedule="cosine",      # 'cosine' | 'linear' | 'constant'
      warmup_steps=0,
      end_learning_rate=0.0,
      grad_clip_norm=1.0,     # 0 disables
      weight_decay_end=placeholder(float),  # None: constant; else cosine to it (DINO)
      # Fine-tuning controls (vitjax/optim.py):
      layer_decay=1.0,        # layer-wise lr decay: block l of L gets lr * decay^(L + 1 - l)
      freeze=(),              # regexes on 'a/b/c' param paths: matches never change
      freeze_depth=0,         # freeze the embeddings and the first k blocks (the model's
                              # declared block order, vitjax/models/features.py); 0: off
      unfreeze=(),            # ((step, regex), ...): frozen until that step (progressive)
  ))
  # Augmentation and regularisation (vitjax/data/augment.py, vitjax/tasks/mixing.py).
  # RandAugment, color jitter and random erasing run in tf.data; Mixup / CutMix
  # in the jitted train step (tasks whose `mixes_batches` is True; a task that
  # would ignore a setting refuses it: vitjax/tasks/base.py).
  c.augment = ml_collections.ConfigDict(dict(
      preset="",              # AugReg: '' | none | light1 | light2 | medium1 | medium2 |
                              # strong1 | strong2 (light/medium/strong = ...1); sets the
                              # RandAugment and mixup_alpha fields (do not set both)
      randaugment_layers=0,   # RandAugment N (0: off)
      randaugment_magnitude=10.0,  # RandAugment M (0..30)
      color_jitter=0.0,       # brightness/contrast/saturation factors in 1 +- this
      random_erase=0.0,       # probability of erasing a random box (N(0, 1) noise)
      mixup_alpha=0.0,        # Beta(a, a); 0: off
      cutmix_alpha=0.0,       # Beta(a, a); 0: off
      mix_prob=1.0,           # probability that a batch / example is mixed at all
      switch_prob=0.5,        # with both alphas > 0: probability of CutMix
      mix_mode="batch",       # 'batch' (one lambda per batch) | 'elem' (per example)
  ))
  c.label_smoothing = 0.0
  c.grad_accum_steps = 1      # micro-batches per update (batch_size is the whole update)
  c.ema_decay = 0.0           # > 0: keep an EMA of the params; evaluation uses it
  c.mixed_precision = ""      # '' (fp32) | 'bf16': bf16 compute, fp32 params and loss

  # Fine-tuning: start from a checkpoint and replace the head.
  c.init_from = ml_collections.ConfigDict(dict(
      checkpoint="",          # vitjax workdir / checkpoint dir, an HF snapshot folder,
                              # a .safetensors file, or hf:<org>/<name> (offline HF cache)
      source="vitjax",        # 'vitjax' | 'auto' (family from config.json / tensor names)
                              # | 'hf' | 'timm'
      reinit_head=True,       # a new head for the new classes (always when shapes differ)
  ))

  # Device mesh and parameter sharding (vitjax/sharding.py). The default is
  # data parallelism: every parameter replicated, the batch split over 'data'.
  c.sharding = ml_collections.ConfigDict(dict(
      mesh=(("data", -1),),   # ((axis, size), ...); -1: the remaining devices
      rules=(),               # ((regex on 'params/a/b/kernel', strategy), ...): first match;
                              # 'replicate' | 'fsdp' | a PartitionSpec tuple, e.g. (None, 'tensor')
      fsdp_min_size=2 ** 14,  # arrays with fewer elements stay replicated under 'fsdp'
  ))

  c.log_every_steps = 50
  c.eval_every_steps = 0      # 0: at the end of every epoch
  c.checkpoint_every_steps = 500
  c.keep_checkpoints = 3
  c.progress_bar = True
  return c


def model_config(model_name: str, **overrides) -> ml_collections.ConfigDict:
  """The registry model's fields (ints, floats, strings, bools) as a ConfigDict,
  so that every one of them can be overridden with --config.model.FIELD=...
  (num_classes is left out: it comes from the dataset)."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  from vitjax.models import create_model  # pylint: disable=g-import-not-at-top
  module = create_model(model_name, **overrides)
  fields = {}
  for f in dataclasses.fields(module):
    value = getattr(module, f.name)
    if f.name not in ("parent", "name", "num_classes") and isinstance(value, (bool, int, float, str)):
      fields[f.name] = value
  return ml_collections.ConfigDict(fields)


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


def _validate_augment(config):
  """config.augment values, and what the task says of augmentation and task_kwargs."""
  from vitjax.data import augment  # pylint: disable=g-import-not-at-top
  from vitjax.tasks import get_task  # pylint: disable=g-import-not-at-top
  augment.resolve(config.get("augment"))
  get_task(config.task).check_config(config)
  if not 0.0 <= config.label_smoothing < 1.0:
    raise UserError(f"config.label_smoothing={config.label_smoothing}: use a value in "
                    "[0, 1) (0.1 is usual).")


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
  if config.optimizer.name not in ("adamw", "sgd", "adafactor"):
    raise UserError(f"config.optimizer.name={config.optimizer.name!r}: use 'adamw', 'sgd' "
                    "or 'adafactor'.")
  if config.optimizer.get("state_dtype") not in ("", "bfloat16", "float32"):
    raise UserError(f"config.optimizer.state_dtype={config.optimizer.state_dtype!r}: use '' "
                    "(float32) or 'bfloat16' (first moments in half precision).")
  if config.optimizer.schedule not in ("cosine", "linear", "constant"):
    raise UserError(f"config.optimizer.schedule={config.optimizer.schedule!r}: use "
                    "'cosine', 'linear' or 'constant'.")
  k = config.grad_accum_steps
  if k < 1 or config.batch_size % (k * num_devices):
    raise UserError(
        f"config.grad_accum_steps={k}: the batch of {config.batch_size} must split into "
        f"{k} micro-batches, each divisible by the {num_devices} devices; use a batch_size "
        f"that is a multiple of {max(k, 1) * num_devices} or a grad_accum_steps dividing "
        f"{config.batch_size // num_devices}.")
  if not 0.0 <= config.ema_decay < 1.0:
    raise UserError(f"config.ema_decay={config.ema_decay}: use 0 (off) or a value in "
                    "(0, 1), e.g. 0.9999.")
  if config.mixed_precision not in ("", "bf16"):
    raise UserError(f"config.mixed_precision={config.mixed_precision!r}: use '' (fp32) "
                    "or 'bf16'.")
  if not 0.0 < config.optimizer.layer_decay <= 1.0:
    raise UserError(f"config.optimizer.layer_decay={config.optimizer.layer_decay}: use a "
                    "value in (0, 1] (1 = off; 0.65-0.75 is usual for ViT fine-tuning).")
  _validate_augment(config)
  if config.init_from.source not in ("vitjax", "auto", "hf", "timm"):
    raise UserError(f"config.init_from.source={config.init_from.source!r}: use "
                    "'vitjax', 'auto', 'hf' or 'timm'.")


# ---------------------------------------------------------------------------
# Published recipes, shared by the per-size files in configs/.

# Fine-tuning datasets: TFDS name, eval split, classes, steps (ViT paper,
# Appendix B.1.1: 10k steps for CIFAR, 500 for Pets, SGD momentum, batch 512).
FINETUNE_SETS = {
    "cifar10": ("cifar10", "test", 10_000),
    "cifar100": ("cifar100", "test", 10_000),
    "pets": ("oxford_iiit_pet", "test", 500),
}


def vit_recipe(model_name: str, arg=None, *, drop_path_rate=0.0, dropout=0.1,
               pretrain_lr=3e-3):
  """ViT configs: arg 'imagenet' (default) pretrains on ImageNet-1k as in the
  ViT paper (Table 3: Adam, batch 4096, lr 3e-3, wd 0.3, 300 epochs, 10k
  warmup steps, clip 1); 'cifar10' / 'cifar100' / 'pets' fine-tune at 384x384
  with SGD (momentum 0.9, batch 512, lr 0.01, cosine, no weight decay),
  starting from --config.init_from.checkpoint. A second part names an AugReg
  preset (vitjax/data/augment.py: RandAugment + Mixup of Steiner et al. 2021),
  e.g. 'imagenet,medium2' (same as --config.augment.preset=medium2).
  """
  arg, _, preset = (arg or "imagenet").partition(",")
  c = _vit_recipe(model_name, arg, drop_path_rate, dropout, pretrain_lr)
  if preset:
    from vitjax.data import augment  # pylint: disable=g-import-not-at-top
    augment.resolve({"preset": preset})  # an unknown name fails here, naming the presets
    c.augment.preset = preset
  return c


def _vit_recipe(model_name, arg, drop_path_rate, dropout, pretrain_lr):
  c = default_config()
  c.model_name = model_name
  c.model = model_config(model_name, drop_path_rate=drop_path_rate, dropout=dropout)
  if arg == "imagenet":
    c.dataset.name = "imagenet2012"
    c.dataset.eval_split = "validation"
    c.input.image_size = 224
    c.input.eval_resize = 256
    c.batch_size = 4096
    c.eval_batch_size = 1024
    c.num_epochs = 300
    c.optimizer.update(learning_rate=pretrain_lr, weight_decay=0.3, warmup_steps=10_000,
                       schedule="cosine", grad_clip_norm=1.0)
    c.checkpoint_every_steps = 2000
    return c
  if arg not in FINETUNE_SETS:
    raise UserError(f"config arg {arg!r}: use 'imagenet' or one of {sorted(FINETUNE_SETS)}.")
  name, eval_split, steps = FINETUNE_SETS[arg]
  c.dataset.name = name
  c.dataset.eval_split = eval_split
  c.model.dropout = 0.0
  c.input.image_size = 384
  c.input.train_augment = "inception_crop"
  c.input.crop_scale = (0.05, 1.0)
  c.batch_size = 512
  c.eval_batch_size = 512
  c.total_steps = steps
  c.optimizer.update(name="sgd", learning_rate=0.01, momentum=0.9, weight_decay=0.0,
                     warmup_steps=min(500, steps // 10), schedule="cosine", grad_clip_norm=1.0)
  c.eval_every_steps = max(steps // 10, 100)
  c.checkpoint_every_steps = max(steps // 10, 100)
  return c


# DeiT's data augmentation (Touvron et al. 2021, Table 9), which Swin, CvT, CrossViT, NAT,
# Focal and ConvNeXt reuse through timm: RandAugment N=2, M=9 (timm's rand-m9-mstd0.5-inc1
# without the magnitude noise), Mixup 0.8 / CutMix 1.0 switched per batch with p 0.5, random
# erasing 0.25. `c.augment.update(DEIT_AUGMENT)`; repeated augmentation is not in vitjax.
DEIT_AUGMENT = dict(randaugment_layers=2, randaugment_magnitude=9.0, mixup_alpha=0.8,
                    cutmix_alpha=1.0, random_erase=0.25)


def deit_recipe(model_name: str, drop_path_rate: float):
  """DeiT on ImageNet-1k (Touvron et al. 2021, Table 9): AdamW, lr 5e-4 x
  batch/512, batch 1024, wd 0.05, 300 epochs, 5 warmup epochs, cosine, label
  smoothing 0.1, stochastic depth, no dropout, no clipping."""
  c = default_config()
  c.model_name = model_name
  c.model = model_config(model_name, drop_path_rate=drop_path_rate)
  c.dataset.name = "imagenet2012"
  c.dataset.eval_split = "validation"
  c.input.image_size = 224
  c.input.eval_resize = 256
  c.input.mean = (0.485, 0.456, 0.406)
  c.input.std = (0.229, 0.224, 0.225)
  c.batch_size = 1024
  c.eval_batch_size = 1000
  c.num_epochs = 300
  steps_per_epoch = 1_281_167 // c.batch_size
  c.optimizer.update(name="adamw", learning_rate=5e-4 * c.batch_size / 512, weight_decay=0.05,
                     warmup_steps=5 * steps_per_epoch, schedule="cosine", grad_clip_norm=0.0,
                     end_learning_rate=1e-5)
  c.label_smoothing = 0.1
  c.checkpoint_every_steps = 2000
  return c


def digits_recipe(model_name: str, *, image_size: int = 16, num_epochs: int = 60,
                  learning_rate: float = 2e-3, **model_overrides) -> ml_collections.ConfigDict:
  """The small-data recipe every digits config shares: the embedded UCI digits
  (1437 train / 360 test) upsampled to `image_size`, a 1/16-image random shift,
  no flips (a flipped digit is another digit), AdamW with 50 warmup steps and
  cosine decay, weight decay 0.05, label smoothing 0.1, batch 128.

  Tuple-valued model fields are set after this by the config itself (they are
  not among `model_config`'s scalar fields) so they stay overridable.
  """
  c = default_config()
  c.model_name = model_name
  c.model = model_config(model_name, **model_overrides)
  c.dataset.name = "digits"
  c.input.image_size = image_size
  c.input.train_augment = "random_crop"
  c.input.crop_padding = max(1, image_size // 16)
  c.input.flip = False
  c.batch_size = 128
  c.eval_batch_size = 360
  c.num_epochs = num_epochs
  c.optimizer.update(learning_rate=learning_rate, weight_decay=0.05, warmup_steps=50)
  c.label_smoothing = 0.1
  c.log_every_steps = 50
  c.eval_every_steps = 250
  c.checkpoint_every_steps = 250
  c.progress_bar = False
  return c


def imagenet_recipe(model_name: str, *, image_size: int = 224, batch_size: int = 1024,
                    num_epochs: int = 300, learning_rate: float = 1e-3,
                    weight_decay: float = 0.05, warmup_epochs: int = 5,
                    label_smoothing: float = 0.1, **model_overrides) -> ml_collections.ConfigDict:
  """ImageNet-1k with the DeiT-style AdamW recipe most hierarchical backbones'
  papers use (Swin, CvT, PVT, NAT, Focal...): AdamW, cosine, warmup epochs,
  label smoothing, Inception crops, ImageNet mean/std, resize to 1.14x for eval.
  """
  c = default_config()
  c.model_name = model_name
  c.model = model_config(model_name, **model_overrides)
  c.dataset.name = "imagenet2012"
  c.dataset.eval_split = "validation"
  c.input.image_size = image_size
  c.input.eval_resize = int(round(image_size / 0.875))
  c.input.mean = (0.485, 0.456, 0.406)
  c.input.std = (0.229, 0.224, 0.225)
  c.batch_size = batch_size
  c.eval_batch_size = 1000
  c.num_epochs = num_epochs
  steps_per_epoch = 1_281_167 // batch_size
  c.optimizer.update(name="adamw", learning_rate=learning_rate, weight_decay=weight_decay,
                     warmup_steps=warmup_epochs * steps_per_epoch, schedule="cosine",
                     grad_clip_norm=5.0)
  c.label_smoothing = label_smoothing
  c.checkpoint_every_steps = 2000
  return c
