"""Stochastic depth (Huang et al. 2016): drop a residual branch per sample."""

import flax.linen as nn
import jax
import jax.numpy as jnp


class DropPath(nn.Module):
  """Zeroes the whole branch for a random `rate` fraction of the batch.

  Surviving samples are scaled by 1 / (1 - rate) so the expectation is kept.
  Uses the 'dropout' RNG stream; identity when `deterministic`. `rate` may be
  a traced scalar (a per-block rate inside a scanned stack of blocks).
  """
  rate: float = 0.0

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    if deterministic or (isinstance(self.rate, (int, float)) and self.rate == 0.0):
      return x
    keep = 1.0 - self.rate
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = jax.random.bernoulli(self.make_rng("dropout"), keep, shape)
    if not isinstance(keep, float):
      keep = jnp.asarray(keep, x.dtype)  # traced rate: divide in x's dtype, as for a float
    return jnp.where(mask, x / keep, jnp.zeros_like(x))
