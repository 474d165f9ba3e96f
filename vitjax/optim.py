"""Optimizers and learning-rate schedules built from `config.optimizer`."""

import flax
import jax
import jax.numpy as jnp
import optax

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


def create_optimizer(opt_cfg, total_steps: int):
  """(optax transformation, schedule) for `config.optimizer`."""
  schedule = create_schedule(opt_cfg, total_steps)
  parts = []
  if opt_cfg.grad_clip_norm:
    parts.append(optax.clip_by_global_norm(opt_cfg.grad_clip_norm))
  if opt_cfg.name == "adamw":
    parts.append(optax.adamw(schedule, b1=opt_cfg.b1, b2=opt_cfg.b2, eps=opt_cfg.eps,
                             weight_decay=opt_cfg.weight_decay, mask=weight_decay_mask))
  else:
    if opt_cfg.weight_decay:
      parts.append(optax.add_decayed_weights(opt_cfg.weight_decay, mask=weight_decay_mask))
    parts.append(optax.sgd(schedule, momentum=opt_cfg.momentum or None,
                           nesterov=opt_cfg.nesterov))
  return optax.chain(*parts), schedule


def global_norm(tree):
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32)))
                      for x in jax.tree.leaves(tree)))
