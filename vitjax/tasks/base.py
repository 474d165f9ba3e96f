"""The task contract: everything the one trainer calls on a task, in one class.

A task is what varies between classification, detection, pretraining, ...:
its loss, its metrics, its evaluation and (optionally) its data and state.
A new task is one file in `vitjax/tasks/` holding a subclass of `Task`
decorated with `@register_task('name')`; the package imports every module in
it, so nothing else is edited (not the trainer, not `vitjax/config.py`).

The trainer (`vitjax/train.py`) calls, in this order:

  Task.check_config(config)             classmethod, before anything is built:
                                        task_kwargs and augmentation refused here
  Task.dataset_info(config)             classmethod -> info (num_classes, sizes)
  task = Task(config, info, model)
  task.init_inputs()                    dummy inputs for model.init
  task.example_batch(batch_size)        shapes of a train batch (planning, no data)
  task.check_params(param_shapes)       start-up checks on the parameter shapes
  task.init_task_state(params)          the task's own state in TrainState, or None
  task.constants()                      pytree passed to every step, or None
  task.train_iterator(config, start_step=, process_index=, process_count=)
  per step (inside jit):
    task.train_loss(params, model_state, batch, rng, consts=, task_state=, step=)
        -> (loss, (metrics, new_model_state, task_out))
    task.update_task_state(task_state, new_params, task_out, step)
  per evaluation:
    task.eval_iterator(config, process_index=, process_count=)
    task.eval_sums(params, model_state, batch)  (jit) -> dict of sums, with 'count'
    task.eval_outputs(params, model_state, batch)  (jit) -> per-example arrays or None
    task.eval_summary(sums) -> metrics;  task.eval_summary_from_outputs(list) -> metrics

Only `train_loss`, `eval_sums` and `eval_summary` must be written; every
other hook has the documented default below (no data of its own, no state,
no constants, no extra checks).

Capabilities (class attributes) say what of the shared config applies:
  host_augment   the data source applies config.augment's host-side ops
                 (RandAugment, colour jitter, random erasing) to the images;
  mixes_batches  train_loss trains on Mixup / CutMix soft targets.
A config asking for what its task does not do is refused at start-up.

`config.task_kwargs` is read strictly: `kwargs` holds the task's own settings
with their defaults, `data_kwargs` the names its data source reads (their
defaults live there); any other key is refused with the nearest known name.
"""

import abc
import difflib
import importlib
import zlib
from typing import Any, ClassVar, Dict, Mapping, Tuple

import jax
import jax.numpy as jnp

from vitjax.errors import UserError

TASKS: Dict[str, type] = {}


def register_task(name: str):
  """Class decorator: makes the task available as `config.task = name`."""
  def register(cls):
    if name in TASKS and TASKS[name] is not cls:
      raise ValueError(f"Task {name!r} is registered twice ({TASKS[name]} and {cls}).")
    if not (isinstance(cls, type) and issubclass(cls, Task)):
      raise TypeError(f"@register_task({name!r}) takes a subclass of vitjax.tasks.base.Task.")
    TASKS[name] = cls
    cls.name = name
    return cls
  return register


def get_task(name: str):
  """The registered task class called `name`."""
  if name not in TASKS:
    close = difflib.get_close_matches(str(name), sorted(TASKS), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise UserError(f"Unknown task {name!r}.{hint} Known tasks: {sorted(TASKS)}.")
  return TASKS[name]


def _given_kwargs(config) -> dict:
  kw = config.get("task_kwargs") or {}
  return dict(kw.to_dict() if hasattr(kw, "to_dict") else kw)


class Task(abc.ABC):
  """Base class of every task; see the module docstring for the contract."""

  name: ClassVar[str] = ""
  host_augment: ClassVar[bool] = False
  mixes_batches: ClassVar[bool] = False
  kwargs: ClassVar[Mapping[str, Any]] = {}
  data_kwargs: ClassVar[Tuple[str, ...]] = ()
  # The module the data comes from: get_dataset_info(config),
  # train_iterator(config, start_step=, process_index=, process_count=) and
  # eval_iterator(config, process_index=, process_count=), fed source_config(config).
  data_source: ClassVar[str] = "vitjax.data"

  def __init__(self, config, info, model):
    self.config = config
    self.info = info
    self.model = model
    self.kw = self.read_kwargs(config)

  # -- configuration ---------------------------------------------------------

  @classmethod
  def read_kwargs(cls, config) -> dict:
    """config.task_kwargs with the task's defaults filled in; unknown keys refused."""
    given = _given_kwargs(config)
    known = sorted(set(cls.kwargs) | set(cls.data_kwargs))
    unknown = sorted(set(given) - set(known))
    if unknown:
      close = difflib.get_close_matches(unknown[0], known, n=1)
      hint = f" Did you mean task_kwargs.{close[0]}?" if close else ""
      raise UserError(
          f"config.task_kwargs {unknown} are not {cls.name} settings.{hint} Known "
          f"settings: {known or 'none'} (see vitjax/tasks/ and the task's data source).")
    return dict(cls.kwargs, **given)

  @classmethod
  def check_config(cls, config):
    """Refuses task_kwargs and augmentation settings this task would ignore."""
    cls.read_kwargs(config)
    from vitjax.data import augment  # pylint: disable=g-import-not-at-top
    aug = augment.resolve(config.get("augment"))
    if aug.mixing and not cls.mixes_batches:
      mixers = sorted(n for n, t in TASKS.items() if t.mixes_batches)
      raise UserError(
          f"config.augment mixes images (mixup_alpha={aug.mixup_alpha}, cutmix_alpha="
          f"{aug.cutmix_alpha}), but config.task={cls.name!r} trains on hard targets "
          f"and would ignore the mixed ones; Mixup / CutMix work with the tasks {mixers}. "
          "Set mixup_alpha=0 and cutmix_alpha=0 (or a preset without Mixup: 'none' / "
          "'light1').")
    if aug.host_side and not cls.host_augment:
      raise UserError(
          "config.augment: RandAugment / color_jitter / random_erase act on classification "
          f"images only; the data of task {cls.name!r} would not apply them (nor to its "
          "masks or boxes). Set randaugment_layers=0, color_jitter=0, random_erase=0 "
          "(and augment.preset='').")

  # -- data ------------------------------------------------------------------

  @classmethod
  def source_config(cls, config):
    """The config the data source reads (a task may fix some of its fields)."""
    return config

  @classmethod
  def _source(cls):
    return importlib.import_module(cls.data_source)

  @classmethod
  def dataset_info(cls, config):
    """What the data holds (num_classes, split sizes), from `data_source`."""
    return cls._source().get_dataset_info(cls.source_config(config))

  def train_iterator(self, config, *, start_step: int = 0, process_index: int = 0,
                     process_count: int = 1):
    """This process's share of every train batch from `start_step` on."""
    return self._source().train_iterator(
        self.source_config(config), start_step=start_step, process_index=process_index,
        process_count=process_count)

  def eval_iterator(self, config, *, process_index: int = 0, process_count: int = 1):
    """This process's share of one pass over the eval split (padded, with 'mask')."""
    return self._source().eval_iterator(
        self.source_config(config), process_index=process_index, process_count=process_count)

  # -- model and state -------------------------------------------------------

  def example_batch(self, batch_size: int):
    """Shapes of one global train batch (jax.ShapeDtypeStruct), for planning
    memory and compiling without data: images and int labels by default."""
    s = self.config.input.image_size
    return {"image": jax.ShapeDtypeStruct((batch_size, s, s, 3), jnp.float32),
            "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32)}

  def init_inputs(self):
    """Dummy inputs for model.init: one image of config.input.image_size."""
    s = self.config.input.image_size
    return jnp.zeros((1, s, s, 3), jnp.float32)

  def check_params(self, param_shapes):
    """Start-up checks on the parameters' shapes (jax.ShapeDtypeStruct tree)."""
    del param_shapes

  def init_task_state(self, params):
    """The task's own state, carried in TrainState and checkpointed; None: none."""
    del params

  def constants(self):
    """A pytree passed to every step as `consts` (e.g. a frozen teacher), or None."""
    return None

  def update_task_state(self, task_state, params, task_out, step):
    """The next task state after an update (params are the updated ones)."""
    del params, task_out, step
    return task_state

  # -- training and evaluation -----------------------------------------------

  @abc.abstractmethod
  def train_loss(self, params, model_state, batch, rng, *, consts=None, task_state=None,
                 step=None):
    """-> (loss, (metrics, new_model_state, task_out)); task_out reaches
    update_task_state (None for tasks without state)."""

  @abc.abstractmethod
  def eval_sums(self, params, model_state, batch):
    """Per-batch sums (dict with 'count'), added up over the eval split."""

  def eval_outputs(self, params, model_state, batch):
    """Per-example arrays handed to eval_summary_from_outputs on the host, or None."""
    del params, model_state, batch

  @abc.abstractmethod
  def eval_summary(self, sums) -> dict:
    """Final metrics (names without the 'eval/' prefix) from the added-up sums."""

  def eval_summary_from_outputs(self, outputs) -> dict:
    """Metrics from every eval batch's `eval_outputs` (host copies, in order)."""
    del outputs
    return {}


def apply_model(model, params, model_state, inputs, *, train: bool, rng=None, **kwargs):
  """Runs `model` on `inputs`; returns (logits, out, new_model_state).

  `kwargs` go to the model's call (e.g. LV-ViT's `mix_box`).

  `model_state` holds non-parameter collections (e.g. BatchNorm's
  'batch_stats'); they are updated in training and read-only in evaluation.
  """
  variables = {"params": params, **model_state}
  rngs = {"dropout": rng} if rng is not None else {}
  if train and model_state:
    (logits, out), new_state = model.apply(
        variables, inputs, train=True, rngs=rngs, mutable=list(model_state), **kwargs)
    return logits, out, dict(new_state)
  logits, out = model.apply(variables, inputs, train=train, rngs=rngs, **kwargs)
  return logits, out, model_state


def fold_rng(rng, name: str):
  """A named sub-stream of `rng` (stable across code changes elsewhere)."""
  return jax.random.fold_in(rng, zlib.crc32(name.encode()) % (2 ** 31))
