"""The one trainer: every task (classification, pretraining, detection, ...)
runs through `train_and_evaluate`, plugging in its loss and evaluation.

Flow: validate config -> dataset info -> model and task from the registries ->
optimizer -> state initialised (or restored from the workdir, or fine-tuned
from `config.init_from`) -> jitted train step with explicit shardings over a
data-parallel mesh -> periodic logging, evaluation and checkpoints -> final
evaluation. Resume is exact: data order and RNG are functions of the step.
"""

import json
import logging
import math
import os
import signal
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vitjax import checkpoint as ckpt_lib
from vitjax import data as data_lib
from vitjax import optim
from vitjax import sharding as shard_lib
from vitjax.config import validate_config
from vitjax.errors import UserError
from vitjax.metric_writer import MetricWriter, ProgressBar
from vitjax.models import create_model
from vitjax.tasks import get_task

log = logging.getLogger(__name__)


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  model_state: Any
  nonfinite_step: jax.Array  # first step whose loss or gradient was NaN/Inf, else -1


def build_model(config, num_classes: int):
  """The registry model named by the config, with its overrides."""
  overrides = dict(config.model.to_dict() if hasattr(config.model, "to_dict") else config.model)
  overrides.setdefault("num_classes", num_classes)
  return create_model(config.model_name, **overrides)


def total_train_steps(config, info) -> int:
  if config.total_steps:
    return int(config.total_steps)
  return max(1, int(math.ceil(config.num_epochs * data_lib.steps_per_epoch(config, info))))


def make_train_step(task, tx, schedule, base_rng):
  """(state, batch) -> (state, metrics): one update; NaN/Inf updates are skipped."""

  def train_step(state, batch):
    rng = jax.random.fold_in(base_rng, state.step)
    grad_fn = jax.value_and_grad(task.train_loss, has_aux=True)
    (loss, (metrics, new_model_state)), grads = grad_fn(
        state.params, state.model_state, batch, rng)
    grad_norm = optim.global_norm(grads)
    updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    nonfinite_step = jnp.where(~finite & (state.nonfinite_step < 0), state.step,
                               state.nonfinite_step)
    new_state = state.replace(
        step=state.step + 1,
        params=keep(new_params, state.params),
        opt_state=keep(new_opt_state, state.opt_state),
        model_state=keep(new_model_state, state.model_state),
        nonfinite_step=nonfinite_step)
    metrics = dict(metrics, loss=loss, grad_norm=grad_norm,
                   learning_rate=schedule(state.step))
    return new_state, metrics

  return train_step


def _data(task):
  """Where the batches come from: the task's own iterators when it defines
  them (e.g. segmentation), else vitjax.data's."""
  return task if hasattr(task, "train_iterator") else data_lib


def evaluate(eval_fn, state, config, mesh, task):
  """One pass over the eval split; returns the task's summary metrics."""
  sums = None
  for local in _data(task).eval_iterator(config, process_index=jax.process_index(),
                                         process_count=jax.process_count()):
    batch = shard_lib.to_global_batch(local, mesh)
    s = eval_fn(state.params, state.model_state, batch)
    sums = s if sums is None else jax.tree.map(jnp.add, sums, s)
  sums = jax.tree.map(lambda x: float(x) if np.ndim(x) == 0 else np.asarray(x, np.float64),
                      jax.device_get(sums))  # non-scalar sums: e.g. a confusion matrix
  return task.eval_summary(sums)


class _Preemption:
  """Turns SIGTERM into 'save a checkpoint and stop' at the next step."""

  def __init__(self):
    self.requested = False
    self._old = None
    try:
      self._old = signal.signal(signal.SIGTERM, self._handler)
    except ValueError:  # not the main thread
      self._old = None

  def _handler(self, signum, frame):  # pylint: disable=unused-argument
    self.requested = True

  def reached(self, step: int) -> bool:
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      try:
        return multihost_utils.reached_preemption_sync_point(step) or self.requested
      except Exception:  # pylint: disable=broad-except
        return self.requested
    return self.requested

  def restore(self):
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)


def _check_workdir_config(config, workdir):
  """Refuses to resume a workdir that a different model/task wrote."""
  path = os.path.join(workdir, "config.json")
  mine = {"model_name": config.model_name, "task": config.task}
  if os.path.exists(path):
    with open(path) as f:
      theirs = json.load(f)
    old = {k: theirs.get(k) for k in mine}
    if old != mine:
      raise UserError(
          f"The workdir {workdir} holds a run of {old}, but this config is {mine}. "
          "Use a new --workdir (nothing in this one was changed).")
  elif jax.process_index() == 0:
    with open(path, "w") as f:
      f.write(config.to_json_best_effort(indent=2))


def _init_from(config, params, model_state, model):
  """Fine-tuning: load pretrained params, replace the head, resample posemb."""
  src = config.init_from
  if src.source == "vitjax":
    loaded, loaded_state = ckpt_lib.load_vitjax_params(src.checkpoint)
  else:
    from vitjax import convert  # pylint: disable=g-import-not-at-top
    loaded, _ = convert.load_pretrained(src.checkpoint, source=src.source)
    loaded_state = {}
  prefix = getattr(model, "num_prefix_tokens", 1)
  params = ckpt_lib.merge_params(params, loaded, reinit_head=src.reinit_head,
                                 num_prefix_tokens=prefix)
  if model_state and loaded_state:
    model_state = ckpt_lib.merge_params(model_state, loaded_state, reinit_head=False)
  return params, model_state


def train_and_evaluate(config, workdir: str):
  """Trains `config` in `workdir` (resuming if it holds a checkpoint).

  Returns the final evaluation metrics (also written to metrics.jsonl).
  """
  mesh = shard_lib.create_mesh()
  validate_config(config, jax.device_count(), jax.process_count())
  os.makedirs(workdir, exist_ok=True)
  _check_workdir_config(config, workdir)

  task_cls = get_task(config.task)
  info = (task_cls.dataset_info(config) if hasattr(task_cls, "dataset_info")
          else data_lib.get_dataset_info(config))
  model = build_model(config, info.num_classes)
  task = task_cls(config, info, model)
  total_steps = total_train_steps(config, info)
  tx, schedule = optim.create_optimizer(config.optimizer, total_steps)
  repl = shard_lib.replicated(mesh)
  base_rng = jax.random.PRNGKey(config.seed)

  def init_state(rng):
    variables = model.init({"params": rng, "dropout": rng}, task.init_inputs(), train=False)
    variables = flax.core.unfreeze(variables)
    params = variables.pop("params")
    return params, variables

  params, model_state = jax.jit(init_state, out_shardings=repl)(
      jax.random.fold_in(base_rng, 1 << 20))
  if config.init_from.checkpoint:
    params, model_state = _init_from(config, params, model_state, model)
    params, model_state = jax.device_put((params, model_state), repl)

  state = jax.jit(lambda p, ms: TrainState(
      step=jnp.zeros((), jnp.int32), params=p, opt_state=tx.init(p), model_state=ms,
      nonfinite_step=jnp.full((), -1, jnp.int32)), out_shardings=repl)(params, model_state)

  checkpointer = ckpt_lib.Checkpointer(workdir, keep=config.keep_checkpoints)
  if checkpointer.latest_step() is not None:
    state = checkpointer.restore(state)
    log.info("Resumed from %s at step %d", checkpointer.directory, int(state.step))
  start_step = int(state.step)

  train_step = jax.jit(make_train_step(task, tx, schedule, base_rng),
                       in_shardings=(repl, shard_lib.batch_sharding(mesh)),
                       out_shardings=(repl, repl), donate_argnums=(0,))
  eval_fn = jax.jit(task.eval_sums, out_shardings=repl)

  writer = MetricWriter(workdir)
  steps_per_epoch = data_lib.steps_per_epoch(config, info)
  eval_every = config.eval_every_steps or steps_per_epoch
  batches = shard_lib.prefetch_to_mesh(
      _data(task).train_iterator(config, start_step=start_step,
                                 process_index=jax.process_index(),
                                 process_count=jax.process_count()), mesh)
  progress = ProgressBar(total_steps, enabled=config.progress_bar)
  preemption = _Preemption()
  pending, last_log_time, last_log_step = [], time.time(), start_step
  compile_time = None
  final = {}

  def check_finite():
    bad = int(jax.device_get(state.nonfinite_step))
    if bad >= 0:
      last = checkpointer.latest_step()
      where = (f"The last good checkpoint (step {last}) is in {checkpointer.directory}."
               if last is not None else "No checkpoint had been written yet.")
      raise UserError(
          f"The loss or gradient became NaN/Inf at step {bad}; training stopped. {where} "
          "Lower config.optimizer.learning_rate, add warmup "
          "(config.optimizer.warmup_steps) or gradient clipping "
          "(config.optimizer.grad_clip_norm).")

  try:
    for step in range(start_step, total_steps):
      batch = next(batches)
      t0 = time.time()
      state, metrics = train_step(state, batch)
      pending.append(metrics)
      if compile_time is None:
        jax.block_until_ready(state.step)
        compile_time = time.time() - t0
        writer.write(step + 1, {"train/compile_time_s": compile_time})
      done = step + 1
      if done % config.log_every_steps == 0 or done == total_steps:
        host = jax.device_get(pending)
        pending = []
        check_finite()
        now = time.time()
        ips = (done - last_log_step) * config.batch_size / max(now - last_log_time, 1e-9)
        avg = {f"train/{k}": float(np.mean([m[k] for m in host])) for k in host[0]}
        avg["train/images_per_s"] = ips
        avg["train/epoch"] = done / steps_per_epoch
        writer.write(done, avg)
        progress.update(done, avg["train/loss"], ips, start_step)
        last_log_time, last_log_step = now, done
      if done % eval_every == 0 or done == total_steps:
        check_finite()
        final = {f"eval/{k}": v for k, v in evaluate(eval_fn, state, config, mesh, task).items()}
        writer.write(done, final)
        log.info("step %d: %s", done, final)
      if done % config.checkpoint_every_steps == 0 or done == total_steps:
        check_finite()
        checkpointer.save(done, state, force=True)
      if preemption.reached(done):
        check_finite()
        checkpointer.save(done, state, force=True)
        checkpointer.wait()
        log.warning("Preempted (SIGTERM): saved step %d to %s; run the same "
                        "command again to resume.", done, checkpointer.directory)
        return {"preempted_at_step": done}
  finally:
    batches.close()
    progress.close()
    checkpointer.wait()
    checkpointer.close()
    preemption.restore()
  if not final and start_step >= total_steps:
    final = {f"eval/{k}": v for k, v in evaluate(eval_fn, state, config, mesh, task).items()}
  return final
