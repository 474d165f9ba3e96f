"""Optimizers and learning-rate schedules built from `config.optimizer`."""

import re

import flax
import jax
import jax.numpy as jnp
import optax

from vitjax.errors import UserError

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


def create_optimizer(opt_cfg, total_steps: int):
  """(optax transformation, schedule) for `config.optimizer`."""
  schedule = create_schedule(opt_cfg, total_steps)
  wd = weight_decay_schedule(opt_cfg, total_steps)
  parts = []
  if opt_cfg.grad_clip_norm:
    parts.append(optax.clip_by_global_norm(opt_cfg.grad_clip_norm))
  if opt_cfg.name == "adamw":
    parts.append(optax.adamw(schedule, b1=opt_cfg.b1, b2=opt_cfg.b2, eps=opt_cfg.eps,
                             weight_decay=wd, mask=weight_decay_mask))
  else:
    if opt_cfg.weight_decay:
      parts.append(optax.add_decayed_weights(wd, mask=weight_decay_mask))
    parts.append(optax.sgd(schedule, momentum=opt_cfg.momentum or None,
                           nesterov=opt_cfg.nesterov))
  if getattr(opt_cfg, "layer_decay", 1.0) != 1.0:
    parts.append(scale_by_layer_decay(opt_cfg.layer_decay))
  return optax.chain(*parts), schedule


def global_norm(tree):
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32)))
                      for x in jax.tree.leaves(tree)))


# ---------------------------------------------------------------------------
# Fine-tuning controls: layer-wise lr decay, freezing, progressive unfreezing.

_BLOCK = re.compile(r"^(?:stage_(\d+)_)?block_(\d+)$")
_STAGE = re.compile(r"^stage_(\d+)_(.*)$")
_EMBEDDING_WORDS = ("stem", "patch_embed", "embedding", "cls_token", "dist_token",
                    "pos_embed", "mask_token", "tokenizer")


def layer_ids(params) -> tuple[dict, int]:
  """({top-level name: layer id}, number of blocks L) for any vitjax backbone.

  Works from the naming every model file follows: blocks are `block_i` or
  `stage_s_block_i` (id 1..L in forward order); embeddings / stems before
  them are 0; a stage's own modules (patch embedding, downsampling) go with
  the stage's first block and its closing norm with its last block; the final
  norm and the head are L + 1 (timm's convention for layer decay).
  """
  names = list(params)
  blocks = sorted((int(m.group(1) or 0), int(m.group(2)), n)
                  for n in names if (m := _BLOCK.match(n)))
  ids = {n: i + 1 for i, (_, _, n) in enumerate(blocks)}
  num = len(blocks)
  for n in names:
    if n in ids:
      continue
    m = _STAGE.match(n)
    if m:
      stage = [ids[b] for s, _, b in blocks if s == int(m.group(1))]
      if stage:
        closing = "norm" in m.group(2) and "embed" not in m.group(2)
        ids[n] = max(stage) if closing else min(stage)
        continue
    ids[n] = 0 if any(w in n for w in _EMBEDDING_WORDS) else num + 1
  return ids, num


def layer_decay_scales(params, decay: float):
  """Per-parameter lr multipliers decay^(L + 1 - layer id) (1.0 for the head)."""
  ids, num = layer_ids(params)
  if not num:
    raise UserError(
        "config.optimizer.layer_decay needs a model whose blocks are named block_i or "
        f"stage_s_block_i; this one has top-level modules {sorted(params)[:12]}.")
  return {n: jax.tree.map(lambda _, s=decay ** (num + 1 - ids[n]): s, sub)
          for n, sub in params.items()}


def scale_by_layer_decay(decay: float) -> optax.GradientTransformation:
  """Multiplies each parameter's update by its layer's lr multiplier."""

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    del params
    scales = layer_decay_scales(updates, decay)
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
