"""Checkpoints: Orbax CheckpointManager in the workdir, and fine-tuning init.

Training state lives in `workdir/checkpoints/<step>/`. Saving keeps the last
`keep` checkpoints; a run started again with the same workdir resumes from the
latest one. Nothing in the workdir is ever deleted except by Orbax's own
keep-last-N rotation of checkpoints this run wrote.
"""

import contextlib
import errno
import io
import logging
import os
import shutil
import sys
import time
import types

import flax
import jax
import numpy as np
import orbax.checkpoint as ocp

from vitjax.errors import UserError

log = logging.getLogger(__name__)


class Checkpointer:
  """Periodic, preemption and final saves of the train state.

  Faults: a checkpoint that cannot be restored (unreadable, truncated,
  missing files) is renamed `<step>.damaged` (never deleted), reported in one
  line, and the newest one that restores is used instead; a save that fails
  for lack of disk space stops the run with one message, the earlier
  checkpoints intact. Orbax writes each save into a temporary folder and
  renames it when complete, so a save killed half-way is never read back.
  """

  def __init__(self, workdir: str, keep: int = 3):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self.keep = keep
    self._pending, self._bytes = None, 0  # the save in flight; its arrays' bytes
    _quiet_orbax_disk_full()
    self.manager = self._manager()

  def _manager(self):
    return ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=self.keep, create=True),
        item_handlers=ocp.StandardCheckpointHandler())

  def latest_step(self):
    return self.manager.latest_step()

  def save(self, step: int, state, force: bool = False):
    self._bytes = state_bytes(state)
    try:
      # Orbax first waits for the previous (asynchronous) save: its error surfaces here.
      self.manager.save(int(step), args=ocp.args.StandardSave(state), force=force)
    except Exception as e:  # pylint: disable=broad-except
      self._raise_if_disk_full(self._pending if self._pending is not None else step, e)
      raise
    self._pending = int(step)

  def wait(self):
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      self._raise_if_disk_full(self._pending, e)
      raise
    self._pending = None

  def _raise_if_disk_full(self, step, error):
    if not _is_disk_full(error):
      return
    free = shutil.disk_usage(self.directory).free
    kept = sorted(self.manager.all_steps())
    if step in kept:
      kept.remove(step)
    raise UserError(
        f"The disk holding {self.directory} is full: saving the checkpoint of step {step} "
        f"failed with {_mb(free)} free (a checkpoint needs about {_mb(self._bytes)} of "
        f"arrays). The earlier checkpoints {kept} are intact. Free space (or copy the workdir "
        "to a larger disk) and run the same command again to resume.") from None

  def restore(self, state):
    """Restores the newest usable checkpoint into the structure/shardings of `state`.

    Returns None when there is no checkpoint. A checkpoint written for another
    model/optimizer is a UserError (nothing renamed); a damaged one is set
    aside as `<step>.damaged` and the next older one is tried.
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    damaged = []
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        with _failed_reads_quiet():
          stored = self.manager.item_metadata(step)
      except Exception as e:  # pylint: disable=broad-except
        damaged.append(self._set_aside(step, e))
        continue
      self._check_fits(step, state, stored)
      try:
        with _failed_reads_quiet():
          restored = self.manager.restore(step, args=ocp.args.StandardRestore(abstract))
          jax.block_until_ready(restored)
      except Exception as e:  # pylint: disable=broad-except
        if stored is None:  # no metadata to tell damage from another model's layout
          raise UserError(
              f"The checkpoint at {self.directory}/{step} does not fit this run's "
              f"model/optimizer ({_short(e)}). It was written by another config. Use a "
              "new --workdir for this config, or run the config that wrote it. Nothing "
              "was deleted.") from e
        damaged.append(self._set_aside(step, e))
        continue
      return restored
    if damaged:
      self.close()
      raise UserError(
          f"No checkpoint in {self.directory} can be restored; the damaged ones were kept "
          f"as {', '.join(damaged)}. Restore a copy of the workdir, or start again with a "
          "new --workdir (nothing was deleted).")
    return None

  def _set_aside(self, step: int, error) -> str:
    """Renames a damaged step folder `<step>.damaged[.k]` and reports it; returns the name."""
    src = os.path.join(self.directory, str(step))
    dst, k = src + ".damaged", 1
    while os.path.exists(dst):
      dst, k = f"{src}.damaged.{k}", k + 1
    if jax.process_index() == 0:
      os.rename(src, dst)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices(f"vitjax_set_aside_{step}")
    log.warning("Checkpoint step %d in %s cannot be restored (%s); kept as %s, trying "
                "the previous one.", step, self.directory, _short(error, 200), dst)
    self.manager.reload()
    return dst

  def _check_fits(self, step, state, stored):
    """Compares shapes with the checkpoint's metadata before touching arrays."""
    if stored is None:
      return
    mine, theirs = _flat_shapes(state.params), _flat_shapes(stored["params"])
    problems = [f"{k}: checkpoint {theirs.get(k)} vs model {v}"
                for k, v in mine.items() if theirs.get(k) != v]
    problems += [f"{k}: only in the checkpoint" for k in theirs if k not in mine]
    n_mine, n_theirs = len(jax.tree.leaves(state)), len(jax.tree.leaves(stored))
    if not problems and n_mine != n_theirs:
      problems.append(f"the train state has {n_mine} arrays, the checkpoint {n_theirs} "
                      "(another optimizer?)")
    if problems:
      self.close()
      raise UserError(
          f"The checkpoint at {self.directory}/{step} does not fit this run's "
          f"model/optimizer: {'; '.join(problems[:5])}. It was written by another "
          "config. Use a new --workdir for this config, or run the config that wrote "
          "it. Nothing was deleted.")

  def close(self):
    self.manager.close()


def _is_disk_full(error) -> bool:
  text = f"{type(error).__name__}: {error}"
  return (isinstance(error, OSError) and error.errno == errno.ENOSPC or
          "No space left" in text or "ENOSPC" in text)


class _OrbaxDiskFullFilter(logging.Filter):
  """Drops Orbax's own tracebacks of a disk-full save: the Checkpointer reports it once."""

  def filter(self, record):
    exc = record.exc_info[1] if record.exc_info else None
    return not ("orbax" in record.pathname and exc is not None and _is_disk_full(exc))


def _quiet_orbax_disk_full():
  absl_logger = logging.getLogger("absl")
  if not any(isinstance(f, _OrbaxDiskFullFilter) for f in absl_logger.filters):
    absl_logger.addFilter(_OrbaxDiskFullFilter())


@contextlib.contextmanager
def _failed_reads_quiet(grace_s: float = 1.0):
  """Holds back what is printed while reading a checkpoint; drops it if the read fails.

  When one array of a damaged checkpoint fails, tensorstore's other pending
  reads finish after Orbax's event loop has closed, and each prints a
  'RuntimeError: Event loop is closed' traceback: noise, once the failure
  itself is reported in one line. A read that succeeds prints what it held.
  """
  held, real = io.StringIO(), sys.stderr
  sys.stderr = held
  try:
    yield
  except BaseException:
    time.sleep(grace_s)  # let the stray callbacks print into `held`
    raise
  else:
    real.write(held.getvalue())
  finally:
    sys.stderr = real


def state_bytes(tree) -> int:
  """Bytes of every array of a pytree (arrays or shape/dtype structs)."""
  return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def _mb(n: int) -> str:
  return f"{n / 2 ** 20:,.1f} MB"


def _flat_shapes(tree):
  """{'a/b/kernel': shape} for every array of a params tree."""
  out = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    key = "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))))
                   for k in path)
    out[key] = tuple(leaf.shape)
  return out


def _short(e, n=300):
  s = str(e).strip().splitlines()
  s = s[0] if s else type(e).__name__
  return s[:n]


def _find_checkpoint(path: str, step: int | None = None,
                     what: str = "config.init_from.checkpoint"):
  """A vitjax workdir, its checkpoints/ dir or a step dir -> (manager dir, step)."""
  path = os.path.abspath(path)
  if not os.path.exists(path):
    raise UserError(f"{what}={path!r} does not exist. Point it at a vitjax workdir, its "
                    "checkpoints/ folder, or one checkpoint step folder.")
  if os.path.isdir(os.path.join(path, "checkpoints")):
    path = os.path.join(path, "checkpoints")
  base = os.path.basename(path.rstrip("/"))
  if base.isdigit() and os.path.isdir(path):
    if step is not None and step != int(base):
      raise UserError(f"{what}={path!r} is the checkpoint of step {base}, not {step}.")
    return os.path.dirname(path), int(base)
  steps = sorted(int(d) for d in os.listdir(path) if d.isdigit()) if os.path.isdir(path) else []
  if not steps:
    raise UserError(f"{what}: no vitjax checkpoint found under {path!r} (expected numbered "
                    "step folders written by a vitjax run).")
  if step is None:
    return path, steps[-1]
  if step not in steps:
    raise UserError(f"{what}: {path!r} has no checkpoint of step {step}; it has steps {steps}.")
  return path, step


def read_checkpoint(path: str, step: int | None = None,
                    what: str = "config.init_from.checkpoint"):
  """(stored tree, step) of a vitjax checkpoint, as numpy trees.

  `path`: a workdir, its checkpoints/ folder or one step folder; `step`: None
  for the latest. The tree is what the run saved (params, model_state,
  ema_params, ...); `what` names the setting that gave `path` in errors.
  """
  directory, step = _find_checkpoint(path, step, what)
  with ocp.CheckpointManager(directory) as mngr:
    try:
      restored = mngr.restore(step, args=ocp.args.StandardRestore())
    except Exception as e:  # pylint: disable=broad-except
      raise UserError(f"Could not read the checkpoint {directory}/{step}: {_short(e)}") from e
  return restored, step


def load_vitjax_params(path: str):
  """The params (and model state) of a vitjax checkpoint, as numpy trees."""
  restored, _ = read_checkpoint(path)
  return restored["params"], restored.get("model_state", {}) or {}


def merge_params(init, loaded, *, reinit_head: bool = True, num_prefix_tokens: int = 1,
                 head_names=("head", "head_dist"), model=None, head_keys=None):
  """Fine-tuning init: `loaded` params into the structure of `init`.

  The head is replaced by the fresh one when `reinit_head` or when its shape
  differs (new classes). The head is `head_keys` ('a/b/c' paths, see
  `class_dependent_keys`) when given, else the top-level `head_names`. Any
  other parameter of another shape goes through the model family's checkpoint
  fixes, registered next to the model (vitjax.models.registry
  .register_checkpoint_fix: a ViT's position embedding of another grid, a Swin
  v1 bias table of another window); `model=None` tries every family's fixes
  (position embeddings with `num_prefix_tokens` prefix tokens). Any other
  missing or mis-shaped parameter is an error that names it.
  """
  from vitjax.models.registry import checkpoint_fixes  # pylint: disable=g-import-not-at-top
  fixes = checkpoint_fixes(model)
  target = model if model is not None else types.SimpleNamespace(
      num_prefix_tokens=num_prefix_tokens)
  init_flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(init), sep="/")
  loaded_flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(loaded), sep="/")
  out, problems = {}, []
  for key, fresh in init_flat.items():
    is_head = key in head_keys if head_keys is not None else key.split("/")[0] in head_names
    if is_head and (reinit_head or key not in loaded_flat or
                    np.shape(loaded_flat[key]) != fresh.shape):
      out[key] = fresh
      continue
    if key not in loaded_flat:
      problems.append(f"missing {key} {tuple(fresh.shape)}")
      continue
    value = np.asarray(loaded_flat[key])
    if value.shape != fresh.shape:
      for fix in fixes:
        fixed = fix(key, value, tuple(fresh.shape), target)
        if fixed is not None and tuple(np.shape(fixed)) == tuple(fresh.shape):
          value = np.asarray(fixed)
          break
      else:
        problems.append(f"{key}: checkpoint {value.shape} vs model {tuple(fresh.shape)}")
        continue
    out[key] = value.astype(fresh.dtype)
  if problems:
    raise UserError(
        "The checkpoint does not match the model: " + "; ".join(problems[:8]) +
        (f" (and {len(problems) - 8} more)" if len(problems) > 8 else "") +
        ". Check config.model_name / config.model against the model that wrote it.")
  return flax.traverse_util.unflatten_dict(out, sep="/")


def class_dependent_keys(model, params, image_size: int):
  """The 'a/b/c' paths of `params` (model.init's) whose shape depends on
  model.num_classes: the classifier(s) a fine-tuning run re-initialises.

  Found by tracing the model with one class more (no compute); None when the
  model has no num_classes or cannot be traced at `image_size`.
  """
  n = getattr(model, "num_classes", None)
  if not isinstance(n, int) or not hasattr(model, "clone"):
    return None
  x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jax.numpy.float32)
  try:
    other = jax.eval_shape(
        lambda x: model.clone(num_classes=n + 1).init(jax.random.PRNGKey(0), x, train=False), x)
  except Exception:  # pylint: disable=broad-except
    return None
  other = flax.traverse_util.flatten_dict(flax.core.unfreeze(other["params"]), sep="/")
  mine = flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep="/")
  return {k for k, v in mine.items()
          if k not in other or tuple(other[k].shape) != tuple(np.shape(v))}
