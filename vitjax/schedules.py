"""Step-indexed schedules shared by the trainer and the tasks (below both).

The run's length in steps, and the per-step values some methods anneal
(EMA momentum, teacher temperature); all are functions of the step, so a
resumed run sees the values an uninterrupted run sees.
"""

import math

import jax.numpy as jnp


def total_train_steps(config, info) -> int:
  """config.total_steps, or num_epochs over the train split (rounded up)."""
  if config.total_steps:
    return int(config.total_steps)
  from vitjax import data as data_lib  # pylint: disable=g-import-not-at-top
  return max(1, int(math.ceil(config.num_epochs * data_lib.steps_per_epoch(config, info))))


def cosine_momentum(step, total_steps: int, base: float):
  """base -> 1 along a half cosine over total_steps (DINO / MoCo v3 / BYOL)."""
  frac = jnp.minimum(step / max(total_steps, 1), 1.0)
  return 1.0 - (1.0 - base) * (jnp.cos(jnp.pi * frac) + 1.0) / 2.0


def teacher_temperature(step, warmup_steps: int, start: float, end: float):
  """Linear from `start` to `end` over warmup_steps, then `end`."""
  if warmup_steps <= 0:
    return jnp.asarray(end, jnp.float32)
  return start + (end - start) * jnp.minimum(step / warmup_steps, 1.0)
