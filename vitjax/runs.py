"""Loading a finished vitjax run (config, model, weights) for tools and teachers.

  run = load_run(workdir)            # the latest checkpoint; EMA weights if kept
  logits, out = run.model.apply(run.variables, images, train=False)

A run is a workdir that `vitjax.main` wrote: `config.json` (the whole
config) and `checkpoints/<step>/` (the train state). `load_run` is the only
place that turns one back into something to apply; its parts are public for
callers that must look at the config or the model before the weights are
read (`read_config`, `build_model`, `load_weights`).

The model is built as the run built it (config.model_name, config.model, the
number of classes the run trained with), in float32: config.mixed_precision
is not applied, since evaluation tools and frozen teachers want full
precision.
"""

import dataclasses
import json
import os
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections

from vitjax import checkpoint as ckpt_lib
from vitjax.config import default_config
from vitjax.data.source import DatasetInfo
from vitjax.errors import UserError
from vitjax.models import create_model


@dataclasses.dataclass
class Run:
  """A finished run, ready to apply: `model.apply(variables, images)`."""
  workdir: str
  config: ml_collections.ConfigDict  # the run's config.json over today's defaults
  model: Any                          # the flax module, float32
  variables: dict                     # {'params': ..., other collections, e.g. 'batch_stats'}
  step: int | None                    # the checkpoint step read (None: random init)
  # The data set's info when it was computed (the class count came from it), else None;
  # `dataset_info(run.config)` computes it.
  info: DatasetInfo | None = None


def _tuples(x):
  """JSON lists back to the tuples the config held."""
  if isinstance(x, dict):
    return {k: _tuples(v) for k, v in x.items()}
  if isinstance(x, list):
    return tuple(_tuples(v) for v in x)
  return x


def _restore(config: ml_collections.ConfigDict, stored: dict) -> None:
  """Writes the stored fields into `config`; fields this version lacks are dropped."""
  for key, value in stored.items():
    if key not in config:
      continue
    current = config[key]
    if isinstance(current, ml_collections.ConfigDict) and isinstance(value, dict):
      if current:  # a fixed schema (dataset, input, optimizer...): field by field
        _restore(current, value)
      else:        # free-form keyword arguments (model, task_kwargs)
        config[key] = ml_collections.ConfigDict(_tuples(value))
      continue
    try:
      config[key] = _tuples(value)
    except (TypeError, ValueError):  # a field whose type changed since the run
      with config.unlocked():
        del config[key]
        config[key] = _tuples(value)


def read_config(workdir: str, what: str = "--workdir") -> ml_collections.ConfigDict:
  """The config a run in `workdir` trained with (its config.json over default_config()).

  `what` names the setting that gave `workdir`, for the error message.
  """
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    why = "" if os.path.isdir(workdir) else " (the folder does not exist)"
    raise UserError(f"{what}={workdir!r} has no config.json{why}: point it at the workdir "
                    "of a vitjax run (the folder holding config.json and checkpoints/).")
  try:
    with open(path) as f:
      stored = json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f"{path} could not be read as JSON ({e}); it should be the config.json "
                    "a vitjax run wrote.") from None
  if not isinstance(stored, dict):
    raise UserError(f"{path} holds no config (a JSON object was expected).")
  config = default_config()
  _restore(config, stored)
  if "model_name" not in stored:
    config.model_name = ""  # build_model refuses it; tools may still look at the rest
  return config


def dataset_info(config) -> DatasetInfo:
  """The data set info of the run's task (a task may read its own kind of data)."""
  from vitjax.tasks import get_task  # pylint: disable=g-import-not-at-top
  return get_task(config.task).dataset_info(config)


def build_model(config, num_classes: int | None = None):
  """(model, dataset info or None): the run's model, in float32.

  The class count is config.model.num_classes when the run set it, else
  `num_classes`, else the run's data set's (then its info is returned too).
  """
  if not config.model_name:
    raise UserError("The run's config.json names no model_name; it was not written by a "
                    "vitjax run.")
  kwargs = _tuples(config.model.to_dict())
  info = None
  if not kwargs.get("num_classes"):
    if num_classes is None:
      info = dataset_info(config)
      num_classes = info.num_classes
    kwargs["num_classes"] = num_classes
  return create_model(config.model_name, **kwargs), info


def load_weights(workdir: str, *, step: int | None = None, ema: bool | None = None,
                 what: str = "--workdir") -> tuple[dict, int]:
  """({'params', other collections}, step) of a run's checkpoint, as numpy trees.

  step: None reads the latest. ema: None takes the EMA of the params when the
  run kept one (what its evaluation reported), True requires it, False takes
  the raw params.
  """
  tree, step = ckpt_lib.read_checkpoint(workdir, step=step, what=what)
  ema_params = tree.get("ema_params")
  if ema and not ema_params:
    raise UserError(f"{what}={workdir!r}: checkpoint step {step} holds no EMA of the params "
                    "(the run had config.ema_decay=0); use ema=None or False.")
  params = ema_params if ema_params and ema is not False else tree["params"]
  return {"params": params, **(tree.get("model_state") or {})}, step


def load_run(workdir: str, *, step: int | None = None, ema: bool | None = None,
             num_classes: int | None = None, config=None, random_init: bool = False,
             seed: int = 0, what: str = "--workdir") -> Run:
  """The run in `workdir`: config, float32 model and the checkpoint's variables.

  step / ema: which weights (see `load_weights`). num_classes: the class
  count when the run's config.model does not set one (default: its data
  set's). config: the run's config when the caller already read (and maybe
  adjusted) it with `read_config`. random_init: a fresh init of the same
  model, seeded by `seed`, instead of the checkpoint (a baseline). what:
  the setting that named `workdir`, for error messages.
  """
  if config is None:
    config = read_config(workdir, what)
  model, info = build_model(config, num_classes)
  if random_init:
    s = config.input.image_size
    variables = jax.jit(model.init)(jax.random.PRNGKey(seed), jnp.zeros((1, s, s, 3)))
    step = None
  else:
    variables, step = load_weights(workdir, step=step, ema=ema, what=what)
  return Run(workdir=workdir, config=config, model=model,
             variables=flax.core.unfreeze(variables), step=step, info=info)
