"""The one trainer: every task (classification, pretraining, detection, ...)
runs through `train_and_evaluate`, plugging in its loss and evaluation.

Flow: validate config -> dataset info -> model and task from the registries ->
optimizer -> state initialised (or restored from the workdir, or fine-tuned
from `config.init_from`) -> jitted train step with explicit shardings over a
device mesh (config.sharding: data parallel by default, FSDP / tensor
parallel by rules) -> periodic logging, evaluation and checkpoints -> final
evaluation. Resume is exact: data order and RNG are functions of the step.
"""

import dataclasses
import json
import logging
import os
import shutil
import signal
import tempfile
import time
from typing import Any, Callable

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
from vitjax.schedules import total_train_steps  # noqa: F401  (re-exported)
from vitjax.tasks import get_task

log = logging.getLogger(__name__)


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  model_state: Any
  nonfinite_step: jax.Array  # first step whose loss or gradient was NaN/Inf, else -1
  ema_params: Any = None     # EMA of params (config.ema_decay > 0), else None
  task_state: Any = None     # a task's own state (e.g. DINO's teacher and center), else None


def build_model(config, num_classes: int):
  """The registry model named by the config, with its overrides."""
  overrides = dict(config.model.to_dict() if hasattr(config.model, "to_dict") else config.model)
  overrides.setdefault("num_classes", num_classes)
  if config.get("mixed_precision") == "bf16":
    overrides["dtype"] = jnp.bfloat16  # compute; params stay float32 (flax param_dtype)
  model = create_model(config.model_name, **overrides)
  if config.get("mixed_precision") == "bf16" and getattr(model, "dtype", None) != jnp.bfloat16:
    raise UserError(f"config.mixed_precision='bf16': model {config.model_name!r} has no "
                    "dtype field to compute in; use mixed_precision=''.")
  return model


def _micro_batches(batch, k: int):
  """[B, ...] -> [k, B / k, ...] with micro-batch i = rows i, i + k, ... so that
  every device keeps contributing its own rows to each micro-batch."""
  return jax.tree.map(lambda x: jnp.swapaxes(x.reshape((-1, k) + x.shape[1:]), 0, 1), batch)


def make_train_step(task, tx, schedule, base_rng, *, accum_steps: int = 1,
                    opt_cfg=None, ema_decay: float = 0.0):
  """(state, batch) -> (state, metrics): one update; NaN/Inf updates are skipped.

  `task` follows vitjax.tasks.base.Task: its `train_loss(params, model_state,
  batch, rng, consts=, task_state=, step=)` returns (loss, (metrics,
  model_state, task_out)); after the update the next task state is
  `task.update_task_state(task_state, new_params, task_out, step)` (task_out
  averaged over micro-batches). `consts` (the task's `constants()`, e.g. a
  frozen teacher's weights) is an argument of the step, not a constant baked
  into the program.
  accum_steps > 1 averages the gradients of that many micro-batches (a scan:
  one micro-batch's activations in memory at a time) before the update: the
  same update as the whole batch at once for models without batch statistics.
  `opt_cfg.freeze / unfreeze` zero the gradients and updates of frozen
  parameters; ema_decay > 0 keeps state.ema_params.
  """
  def loss_and_grads(params, model_state, batch, rng, consts, task_state, step):
    def loss_fn(p, ms, b, r):  # task_out rides with the metrics
      loss, (metrics, ms, task_out) = task.train_loss(
          p, ms, b, r, consts=consts, task_state=task_state, step=step)
      return loss, ((metrics, task_out), ms)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if accum_steps == 1:
      return grad_fn(params, model_state, batch, rng)

    def micro(carry, xs):
      model_state, grads_sum, loss_sum, metrics_sum = carry
      i, mb = xs
      (loss, (metrics, model_state)), grads = grad_fn(
          params, model_state, mb, jax.random.fold_in(rng, i))
      add = lambda a, b: jax.tree.map(jnp.add, a, b)
      return (model_state, add(grads_sum, grads), loss_sum + loss,
              add(metrics_sum, metrics)), None

    mbs = _micro_batches(batch, accum_steps)
    first = jax.tree.map(lambda x: x[0], mbs)
    metrics_shape = jax.eval_shape(lambda: grad_fn(params, model_state, first, rng)[0][1][0])
    zeros = lambda t: jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), t)
    init = (model_state, zeros(params), jnp.zeros((), jnp.float32), zeros(metrics_shape))
    (model_state, grads, loss, metrics), _ = jax.lax.scan(
        micro, init, (jnp.arange(accum_steps), mbs))
    mean = lambda t: jax.tree.map(lambda a: a / accum_steps, t)
    return (loss / accum_steps, (mean(metrics), model_state)), mean(grads)

  def train_step(state, batch, consts=None):
    rng = jax.random.fold_in(base_rng, state.step)
    (loss, ((metrics, task_out), new_model_state)), grads = loss_and_grads(
        state.params, state.model_state, batch, rng, consts, state.task_state, state.step)
    trainable = (optim.trainable_mask(state.params, opt_cfg, state.step)
                 if opt_cfg is not None else None)
    zero_frozen = lambda t: t if trainable is None else jax.tree.map(
        lambda a, on: jnp.where(on, a, jnp.zeros_like(a)), t, trainable)
    grads = zero_frozen(grads)
    grad_norm = optim.global_norm(grads)
    updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, zero_frozen(updates))
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    nonfinite_step = jnp.where(~finite & (state.nonfinite_step < 0), state.step,
                               state.nonfinite_step)
    new_ema = state.ema_params
    if ema_decay:
      new_ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p,
                             state.ema_params, new_params)
    new_task_state = task.update_task_state(state.task_state, new_params, task_out, state.step)
    new_state = state.replace(
        step=state.step + 1,
        params=keep(new_params, state.params),
        opt_state=keep(new_opt_state, state.opt_state),
        model_state=keep(new_model_state, state.model_state),
        ema_params=keep(new_ema, state.ema_params),
        task_state=keep(new_task_state, state.task_state),
        nonfinite_step=nonfinite_step)
    metrics = dict(metrics, loss=loss, grad_norm=grad_norm,
                   learning_rate=schedule(state.step))
    return new_state, metrics

  return train_step


def make_eval_fn(task, out_shardings):
  """jit of (task.eval_sums, task.eval_outputs): the per-batch sums and the
  per-example outputs (None for most tasks) that `evaluate` hands to
  `task.eval_summary_from_outputs` on the host."""
  return jax.jit(lambda p, m, b: (task.eval_sums(p, m, b), task.eval_outputs(p, m, b)),
                 out_shardings=out_shardings)


def evaluate(eval_fn, state, config, mesh, task):
  """One pass over the eval split; returns the task's summary metrics."""
  sums, outputs = None, []
  for local in task.eval_iterator(config, process_index=jax.process_index(),
                                  process_count=jax.process_count()):
    batch = shard_lib.to_global_batch(local, mesh)
    params = state.params if state.ema_params is None else state.ema_params
    s, o = eval_fn(params, state.model_state, batch)
    if o is not None:
      outputs.append(jax.device_get(o))
    sums = s if sums is None else jax.tree.map(jnp.add, sums, s)
  sums = jax.tree.map(lambda x: float(x) if np.ndim(x) == 0 else np.asarray(x, np.float64),
                      jax.device_get(sums))  # non-scalar sums: e.g. a confusion matrix
  summary = task.eval_summary(sums)
  if outputs:
    summary.update(task.eval_summary_from_outputs(outputs))
  return summary


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


def _check_workdir_writable(workdir):
  """Refuses, before any compute, a workdir that cannot be created or written."""
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=workdir, prefix=".vitjax-write-check-"):
      pass
  except OSError as e:
    raise UserError(f"The workdir {workdir} cannot be written ({e.strerror or e}). Give a "
                    "--workdir on a writable filesystem (nothing in this one was "
                    "changed).") from None


def _check_free_space(workdir, checkpoint_bytes: int):
  """Refuses a workdir whose filesystem cannot hold one more checkpoint."""
  free = shutil.disk_usage(workdir).free
  need = int(checkpoint_bytes * 1.1) + (1 << 20)  # arrays + Orbax's metadata files
  if free < need:
    raise UserError(
        f"The filesystem of the workdir {workdir} has {free / 2 ** 20:,.1f} MB free, but one "
        f"checkpoint of this run needs about {need / 2 ** 20:,.1f} MB. Free space or give a "
        "--workdir on a larger filesystem (nothing in this one was changed).")


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


def _write_workdir_config(config, workdir):
  """config.json of a new run, once its state was built (a refused start writes nothing)."""
  path = os.path.join(workdir, "config.json")
  if jax.process_index() == 0 and not os.path.exists(path):
    with open(path, "w") as f:
      f.write(config.to_json_best_effort(indent=2))


def _init_from(config, params, model_state, model):
  """Fine-tuning: load pretrained weights (a vitjax run, or any supported family's
  Hugging Face / timm weights, vitjax.convert.load_for_model), re-initialise the
  classifier, and adapt the rest with the family's checkpoint fixes
  (ckpt_lib.merge_params); BatchNorm statistics come along."""
  from vitjax.convert import pretrained  # pylint: disable=g-import-not-at-top
  src = config.init_from
  source = src.source
  if source == "vitjax" and pretrained.is_published(src.checkpoint):
    source = "auto"  # hf:<org>/<name>, a snapshot folder or a .safetensors file
  if source == "vitjax":
    loaded, loaded_state = ckpt_lib.load_vitjax_params(src.checkpoint)
  else:
    loaded, loaded_state = pretrained.load_for_model(src.checkpoint, model, source=source,
                                                     model_name=config.model_name)
  heads = ckpt_lib.class_dependent_keys(model, params, config.input.image_size)
  params = ckpt_lib.merge_params(params, loaded, reinit_head=src.reinit_head,
                                 num_prefix_tokens=getattr(model, "num_prefix_tokens", 1),
                                 model=model, head_keys=heads)
  if model_state and loaded_state:
    merged = ckpt_lib.merge_params({k: model_state[k] for k in loaded_state if k in model_state},
                                   loaded_state, reinit_head=False, model=model, head_keys=set())
    model_state = {**model_state, **merged}
  return params, model_state


@dataclasses.dataclass
class Run:
  """A run's pieces before any array exists: the mesh, task, model, optimizer,
  the train state's shapes and shardings. `build_run` makes it; the trainer,
  `vitjax.tools.plan` and tests build the state and the step from it."""
  config: Any
  mesh: Any
  task: Any
  info: Any
  model: Any
  tx: Any
  schedule: Any
  total_steps: int
  base_rng: Any
  init_variables: Callable  # rng -> (params, other collections)
  make_state: Callable      # (params, other collections) -> TrainState
  state_shapes: Any         # TrainState of jax.ShapeDtypeStruct
  state_sharding: Any       # TrainState of NamedSharding (config.sharding.rules)

  @property
  def init_rng(self):
    return jax.random.fold_in(self.base_rng, 1 << 20)

  def init_state(self) -> TrainState:
    """The initial train state, every array born with its sharding
    (pretrained weights merged in when config.init_from names some)."""
    init_sharding = (self.state_sharding.params, self.state_sharding.model_state)
    params, model_state = jax.jit(self.init_variables, out_shardings=init_sharding)(
        self.init_rng)
    if self.config.init_from.checkpoint:
      params, model_state = _init_from(self.config, params, model_state, self.model)
      params, model_state = jax.device_put((params, model_state), init_sharding)
    return jax.jit(self.make_state, out_shardings=self.state_sharding)(params, model_state)

  def jit_train_step(self):
    """(jitted step, consts): the step takes (state, batch[, consts])."""
    config, repl = self.config, shard_lib.replicated(self.mesh)
    step_fn = make_train_step(self.task, self.tx, self.schedule, self.base_rng,
                              accum_steps=config.grad_accum_steps, opt_cfg=config.optimizer,
                              ema_decay=config.ema_decay)
    consts = self.task.constants()
    in_shardings = (self.state_sharding, shard_lib.batch_sharding(self.mesh))
    if consts is not None:
      consts = jax.device_put(consts, repl)
      in_shardings += (repl,)
    return jax.jit(step_fn, in_shardings=in_shardings, out_shardings=(self.state_sharding, repl),
                   donate_argnums=(0,)), consts


def build_run(config, mesh=None, info=None) -> Run:
  """Validates `config` and builds its Run (traced shapes only: nothing is
  compiled or allocated). `info` stands in for the data set's (e.g. planning
  a run whose data is not on this machine)."""
  shard_cfg = config.sharding
  mesh = mesh if mesh is not None else shard_lib.create_mesh(shard_cfg.mesh)
  # Batches must split over the data-parallel devices (all of them by default).
  validate_config(config, shard_lib.data_size(mesh), jax.process_count())
  task_cls = get_task(config.task)
  info = info if info is not None else task_cls.dataset_info(config)
  model = build_model(config, info.num_classes)
  task = task_cls(config, info, model)
  total_steps = total_train_steps(config, info)
  tx, schedule = optim.create_optimizer(config.optimizer, total_steps, model)

  def init_variables(rng):
    variables = model.init({"params": rng, "dropout": rng}, task.init_inputs(), train=False)
    variables = flax.core.unfreeze(variables)
    params = variables.pop("params")
    return params, variables

  def make_state(p, ms):
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=p, opt_state=tx.init(p), model_state=ms,
        nonfinite_step=jnp.full((), -1, jnp.int32),
        ema_params=p if config.ema_decay else None,
        task_state=task.init_task_state(p))

  base_rng = jax.random.PRNGKey(config.seed)
  # Start-up checks on the shapes: traced, not compiled or run.
  opt = config.optimizer
  shapes = jax.eval_shape(init_variables, jax.random.fold_in(base_rng, 1 << 20))
  optim.check_freeze_patterns(shapes[0], opt)
  if opt.layer_decay != 1 or opt.get("freeze_depth", 0):
    optim.depth_scales(shapes[0], model, opt.layer_decay, opt.get("freeze_depth", 0))
  task.check_params(shapes[0])
  state_shapes = jax.eval_shape(make_state, *shapes)
  state_sharding = shard_lib.state_shardings(state_shapes, mesh, shard_cfg.rules,
                                             shard_cfg.fsdp_min_size)
  return Run(config=config, mesh=mesh, task=task, info=info, model=model, tx=tx,
             schedule=schedule, total_steps=total_steps, base_rng=base_rng,
             init_variables=init_variables, make_state=make_state,
             state_shapes=state_shapes, state_sharding=state_sharding)


def train_and_evaluate(config, workdir: str):
  """Trains `config` in `workdir` (resuming if it holds a checkpoint).

  Returns the final evaluation metrics (also written to metrics.jsonl).
  """
  # Problems with the config or the workdir are found before anything runs.
  mesh = shard_lib.create_mesh(config.sharding.mesh)
  validate_config(config, shard_lib.data_size(mesh), jax.process_count())
  _check_workdir_writable(workdir)
  _check_workdir_config(config, workdir)
  run = build_run(config, mesh)
  _check_free_space(workdir, ckpt_lib.state_bytes(run.state_shapes))
  task, info, total_steps = run.task, run.info, run.total_steps
  repl = shard_lib.replicated(mesh)
  state = run.init_state()
  _write_workdir_config(config, workdir)

  checkpointer = ckpt_lib.Checkpointer(workdir, keep=config.keep_checkpoints)
  restored = checkpointer.restore(state)
  if restored is not None:
    state = restored
    log.info("Resumed from %s at step %d", checkpointer.directory, int(state.step))
  start_step = int(state.step)

  jitted, consts = run.jit_train_step()
  train_step = jitted if consts is None else (lambda state, batch: jitted(state, batch, consts))
  eval_fn = make_eval_fn(task, repl)

  writer = MetricWriter(workdir, start_step=start_step)
  steps_per_epoch = data_lib.steps_per_epoch(config, info)
  eval_every = config.eval_every_steps or steps_per_epoch
  batches = shard_lib.prefetch_to_mesh(
      task.train_iterator(config, start_step=start_step, process_index=jax.process_index(),
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
    writer.close()
    progress.close()
    checkpointer.wait()
    checkpointer.close()
    preemption.restore()
  if not final and start_step >= total_steps:
    final = {f"eval/{k}": v for k, v in evaluate(eval_fn, state, config, mesh, task).items()}
  return final
