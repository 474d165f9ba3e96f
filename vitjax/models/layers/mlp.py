"""The transformer feed-forward block: Dense -> GELU -> Dropout -> Dense."""

from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp


def gelu(x):
  """Exact (erf) GELU, as in the ViT paper, timm and HF transformers."""
  return jax.nn.gelu(x, approximate=False)


class Mlp(nn.Module):
  """Two Dense layers with an activation; `hidden_dim` is the inner width."""
  hidden_dim: int
  out_dim: Optional[int] = None
  dropout: float = 0.0
  act: Callable = gelu
  dtype: Any = jnp.float32
  kernel_init: Callable = nn.initializers.xavier_uniform()
  bias_init: Callable = nn.initializers.normal(stddev=1e-6)

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    out_dim = self.out_dim or x.shape[-1]
    x = nn.Dense(self.hidden_dim, dtype=self.dtype, kernel_init=self.kernel_init,
                 bias_init=self.bias_init, name="fc1")(x)
    x = self.act(x)
    x = nn.Dropout(self.dropout)(x, deterministic=deterministic)
    x = nn.Dense(out_dim, dtype=self.dtype, kernel_init=self.kernel_init,
                 bias_init=self.bias_init, name="fc2")(x)
    return nn.Dropout(self.dropout)(x, deterministic=deterministic)
