"""Optimizers and learning-rate schedules built from `config.optimizer`."""

import re

import flax
import jax
import jax.numpy as jnp
import optax

from vitjax.errors import UserError
from vitjax.models.features import layer_groups

# Parameters never decayed: norms, biases, position embeddings, special tokens.
_NO_DECAY_NAMES = ("pos_embedding", "cls_token", "dist_token", "mask_token",
                   "relative_position_bias_table")


def weight_decay_mask(params):
  """True for the parameters that get weight decay (kernels and embeddings)."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
  mask = {}
  for path, leaf in flat.items():
    name = path[-1]
    decay = leaf.ndim > 1 and name not in _NO_DECAY_NAMES
    decay = decay and not any("norm" in p.lower() for p in path[:-1])
    mask[path] = decay
  return flax.traverse_util.unflatten_dict(mask)


def create_schedule(opt_cfg, total_steps: int):
  """Linear warmup to the peak rate, then cosine / linear decay (or constant)."""
  peak, end = opt_cfg.learning_rate, opt_cfg.end_learning_rate
  warmup = min(opt_cfg.warmup_steps, total_steps)
  decay_steps = max(total_steps - warmup, 1)
  if opt_cfg.schedule == "cosine":
    decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=end / peak if peak else 0.0)
  elif opt_cfg.schedule == "linear":
    decay = optax.linear_schedule(peak, end, decay_steps)
  else:
    decay = optax.constant_schedule(peak)
  if not warmup:
    return decay
  return optax.join_schedules(
      [optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def weight_decay_schedule(opt_cfg, total_steps: int):
  """The weight decay: constant, or a cosine from it to `weight_decay_end` (DINO)."""
  start, end = opt_cfg.weight_decay, opt_cfg.get("weight_decay_end")
  if end is None:
    return start
  return lambda step: end + 0.5 * (start - end) * (
      1.0 + jnp.cos(jnp.pi * jnp.minimum(step / max(total_steps, 1), 1.0)))


def create_optimizer(opt_cfg, total_steps: int, model=None):
  """(optax transformation, schedule) for `config.optimizer`; `model` (whose
  declared block order sets the layer ids) is needed for layer_decay and
  freeze_depth."""
  schedule = create_schedule(opt_cfg, total_steps)
  wd = weight_decay_schedule(opt_cfg, total_steps)
  parts = []
  if opt_cfg.grad_clip_norm:
    parts.append(optax.clip_by_global_norm(opt_cfg.grad_clip_norm))
  state_dtype = opt_cfg.get("state_dtype") or None  # e.g. 'bfloat16': first moments
  if opt_cfg.name == "adamw":
    parts.append(optax.adamw(schedule, b1=opt_cfg.b1, b2=opt_cfg.b2, eps=opt_cfg.eps,
                             weight_decay=wd, mask=weight_decay_mask, mu_dtype=state_dtype))
  elif opt_cfg.name == "adafactor":
    # Factored second moments (Shazeer & Stern 2018); as for ViT-g (Zhai et al. 2022,
    # Sec. 3.4) the first moment is kept (b1) and may be stored in bfloat16 (state_dtype).
    parts.append(optax.adafactor(
        schedule, decay_rate=opt_cfg.b2, momentum=opt_cfg.b1 or None,
        multiply_by_parameter_scale=False, dtype_momentum=state_dtype or jnp.float32,
        weight_decay_rate=wd if opt_cfg.weight_decay else None,
        weight_decay_mask=weight_decay_mask))
  else:
    if opt_cfg.weight_decay:
      parts.append(optax.add_decayed_weights(wd, mask=weight_decay_mask))
    parts.append(optax.sgd(schedule, momentum=opt_cfg.momentum or None,
                           nesterov=opt_cfg.nesterov))
  decay, freeze_depth = opt_cfg.get("layer_decay", 1.0), opt_cfg.get("freeze_depth", 0)
  if decay != 1.0 or freeze_depth:
    if model is None:
      raise ValueError("create_optimizer: layer_decay / freeze_depth need the model (its "
                       "declared block order); pass model=.")
    parts.append(scale_by_depth(model, decay, freeze_depth))
  return optax.chain(*parts), schedule


def global_norm(tree):
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32)))
                      for x in jax.tree.leaves(tree)))


# ---------------------------------------------------------------------------
# Fine-tuning controls: layer-wise lr decay, freezing, progressive unfreezing.
# Layer ids come from the block order the model declares
# (`layer_groups`, vitjax/models/features.py), never from parameter names.


def _prefixes(params):
  """Every 'a/b' prefix of every parameter path."""
  out = set()
  for key in flax.traverse_util.flatten_dict(flax.core.unfreeze(params)):
    out.update("/".join(key[:i]) for i in range(1, len(key) + 1))
  return out


def layer_ids(params, model) -> tuple[dict, int]:
  """({declared path prefix or top-level name: layer id}, number of blocks L).

  Group 0 of `model`'s declared block order (the embeddings) is id 0, group l
  (the l-th block with its stage's modules) id l; every other top-level module
  (final norm, heads) is L + 1 (timm's convention for layer decay).
  """
  groups = layer_groups(model)
  present = _prefixes(params)
  ids = {}
  for lid, group in enumerate(groups):
    found = [n for n in group if n in present]
    if lid and not found:
      raise UserError(
          f"{type(model).__name__} declares block {lid} as {list(group)} but has no such "
          f"parameters (top-level modules: {sorted(params)[:12]}); its layer_groups() and "
          "its module names disagree.")
    ids.update((n, lid) for n in found)
  num = len(groups) - 1
  for top in params:
    if top not in ids and not any(n.startswith(top + "/") for n in ids):
      ids[top] = num + 1
  return ids, num


def layer_tree(params, model):
  """(tree of each parameter's layer id, L): the longest declared prefix wins."""
  ids, num = layer_ids(params, model)

  def lookup(path, _):
    parts = [getattr(k, "key", getattr(k, "name", k)) for k in path]
    for i in range(len(parts), 0, -1):
      lid = ids.get("/".join(map(str, parts[:i])))
      if lid is not None:
        return lid
    return num + 1
  return jax.tree_util.tree_map_with_path(lookup, params), num


def depth_scales(params, model, decay: float = 1.0, freeze_depth: int = 0):
  """Per-parameter update multipliers: decay^(L + 1 - layer id) (1.0 for the
  head), and 0 for the embeddings and the first `freeze_depth` blocks."""
  tree, num = layer_tree(params, model)
  if not num:
    raise UserError(f"{type(model).__name__} declares no blocks, so layer_decay and "
                    "freeze_depth do not apply to it.")
  if not 0 <= freeze_depth <= num + 1:
    raise UserError(f"config.optimizer.freeze_depth={freeze_depth}: {type(model).__name__} "
                    f"has {num} blocks; use 0 (off) to {num} (every block frozen, head "
                    f"trained) or {num + 1} (everything).")
  return jax.tree.map(
      lambda lid: 0.0 if freeze_depth and lid <= freeze_depth else decay ** (num + 1 - lid),
      tree)


def layer_decay_scales(params, decay: float, model):
  """Per-parameter lr multipliers decay^(L + 1 - layer id) (1.0 for the head)."""
  return depth_scales(params, model, decay)


def scale_by_depth(model, decay: float = 1.0,
                   freeze_depth: int = 0) -> optax.GradientTransformation:
  """Multiplies each parameter's update by its layer's multiplier
  (`depth_scales`): layer-wise lr decay and freezing by depth."""

  def init_fn(params):
    depth_scales(params, model, decay, freeze_depth)  # errors before the first step
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    del params
    scales = depth_scales(updates, model, decay, freeze_depth)
    return jax.tree.map(lambda u, s: u * jnp.asarray(s, u.dtype), updates, scales), state

  return optax.GradientTransformation(init_fn, update_fn)


def _paths(params):
  return {"/".join(k): k for k in flax.traverse_util.flatten_dict(
      flax.core.unfreeze(params))}


def check_freeze_patterns(params, opt_cfg) -> None:
  """UserError (before any compile) when a freeze / unfreeze regex matches nothing."""
  paths = list(_paths(params))
  patterns = [("freeze", p) for p in opt_cfg.freeze]
  for entry in opt_cfg.unfreeze:
    if len(entry) != 2:
      raise UserError(f"config.optimizer.unfreeze entry {entry!r}: use (step, regex), e.g. "
                      "((500, '^block_(6|7)/'), (1000, '.*')).")
    patterns.append(("unfreeze", entry[1]))
  for field, pattern in patterns:
    try:
      rx = re.compile(pattern)
    except re.error as e:
      raise UserError(f"config.optimizer.{field} pattern {pattern!r} is not a valid regular "
                      f"expression: {e}.") from None
    if not any(rx.search(p) for p in paths):
      tops = sorted({p.split("/")[0] for p in paths})
      raise UserError(
          f"config.optimizer.{field} pattern {pattern!r} matches no parameter of "
          f"{len(paths)}. Patterns are regexes searched in paths like {paths[0]!r}; the "
          f"top-level modules are {tops[:16]}.")


def trainable_mask(params, opt_cfg, step):
  """Tree of bools (True = updated at `step`): `freeze` matches never are, each
  `unfreeze` (step_k, regex) match only from step_k on. None when nothing is frozen."""
  if not opt_cfg.freeze and not opt_cfg.unfreeze:
    return None
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
  out = {}
  for key in flat:
    path = "/".join(key)
    on = jnp.asarray(not any(re.search(p, path) for p in opt_cfg.freeze))
    for start, pattern in opt_cfg.unfreeze:
      if re.search(pattern, path):
        on = on & (step >= start)
    out[key] = on
  return flax.traverse_util.unflatten_dict(out)
