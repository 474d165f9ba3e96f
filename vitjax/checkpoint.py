"""Checkpoints: Orbax CheckpointManager in the workdir, and fine-tuning init.

Training state lives in `workdir/checkpoints/<step>/`. Saving keeps the last
`keep` checkpoints; a run started again with the same workdir resumes from the
latest one. Nothing in the workdir is ever deleted except by Orbax's own
keep-last-N rotation of checkpoints this run wrote.
"""

import os

import flax
import jax
import numpy as np
import orbax.checkpoint as ocp

from vitjax.errors import UserError
from vitjax.models.layers import resample_posemb, resample_relative_position_bias_table


class Checkpointer:
  """Periodic, preemption and final saves of the train state."""

  def __init__(self, workdir: str, keep: int = 3):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        item_handlers=ocp.StandardCheckpointHandler())

  def latest_step(self):
    return self.manager.latest_step()

  def save(self, step: int, state, force: bool = False):
    self.manager.save(int(step), args=ocp.args.StandardSave(state), force=force)

  def wait(self):
    self.manager.wait_until_finished()

  def restore(self, state):
    """Restores the latest checkpoint into the structure/shardings of `state`."""
    step = self.latest_step()
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    self._check_fits(step, state)
    try:
      return self.manager.restore(step, args=ocp.args.StandardRestore(abstract))
    except (ValueError, KeyError, TypeError) as e:
      raise UserError(
          f"The checkpoint at {self.directory}/{step} does not fit this run's "
          f"model/optimizer ({_short(e)}). It was written by another config. Use a "
          "new --workdir for this config, or run the config that wrote it. Nothing "
          "was deleted.") from e

  def _check_fits(self, step, state):
    """Compares shapes with the checkpoint's metadata before touching arrays."""
    stored = self.manager.item_metadata(step)
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


def _find_checkpoint(path: str):
  """A vitjax workdir, its checkpoints/ dir or a step dir -> (manager dir, step)."""
  path = os.path.abspath(path)
  if not os.path.exists(path):
    raise UserError(f"config.init_from.checkpoint={path!r} does not exist. Point it at a "
                    "vitjax workdir, its checkpoints/ folder, or one checkpoint step folder.")
  if os.path.isdir(os.path.join(path, "checkpoints")):
    path = os.path.join(path, "checkpoints")
  base = os.path.basename(path.rstrip("/"))
  if base.isdigit() and os.path.isdir(path):
    return os.path.dirname(path), int(base)
  steps = [int(d) for d in os.listdir(path) if d.isdigit()]
  if not steps:
    raise UserError(f"No vitjax checkpoint found under {path!r} (expected numbered step "
                    "folders written by a vitjax run).")
  return path, max(steps)


def load_vitjax_params(path: str):
  """The params (and model state) of a vitjax checkpoint, as numpy trees."""
  directory, step = _find_checkpoint(path)
  with ocp.CheckpointManager(directory) as mngr:
    try:
      restored = mngr.restore(step, args=ocp.args.StandardRestore())
    except Exception as e:  # pylint: disable=broad-except
      raise UserError(f"Could not read the checkpoint {directory}/{step}: {_short(e)}") from e
  return restored["params"], restored.get("model_state", {}) or {}


def merge_params(init, loaded, *, reinit_head: bool = True, num_prefix_tokens: int = 1,
                 head_names=("head", "head_dist")):
  """Fine-tuning init: `loaded` params into the structure of `init`.

  The head is replaced by the fresh one when `reinit_head` or when its shape
  differs (new classes); a learned position embedding of another grid size is
  resampled, and so is a Swin relative-position-bias table of another window
  size; any other missing or mis-shaped parameter is an error that names it.
  """
  init_flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(init), sep="/")
  loaded_flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(loaded), sep="/")
  out, problems = {}, []
  for key, fresh in init_flat.items():
    is_head = key.split("/")[0] in head_names
    if is_head and (reinit_head or key not in loaded_flat or
                    np.shape(loaded_flat[key]) != fresh.shape):
      out[key] = fresh
      continue
    if key not in loaded_flat:
      problems.append(f"missing {key} {tuple(fresh.shape)}")
      continue
    value = np.asarray(loaded_flat[key])
    if value.shape != fresh.shape:
      if key.endswith("pos_embedding") and value.shape[-1] == fresh.shape[-1]:
        n_new = fresh.shape[1] - num_prefix_tokens
        side = int(round(np.sqrt(n_new)))
        value = np.asarray(resample_posemb(value, (side, side), num_prefix_tokens))
      elif (key.endswith("relative_position_bias_table") and value.ndim == 2 and
            value.shape[-1] == fresh.shape[-1]):
        # Swin v1: a window of another size -> resample the (2w-1)^2 bias table.
        new_window = (int(round(np.sqrt(fresh.shape[0]))) + 1) // 2
        value = np.asarray(resample_relative_position_bias_table(value, new_window))
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
