"""Multi-head self-attention with a fused qkv projection."""

from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp


def dot_product_attention(q, k, v, bias=None, mask=None, dropout_fn=None,
                          sow_fn=None):
  """softmax(q k^T / sqrt(d) + bias) v over [B, N, H, d] inputs.

  `bias` broadcasts to [B, H, Nq, Nk] (e.g. a relative position bias), `mask`
  is True where attention is allowed. The softmax runs in float32. `sow_fn`,
  if given, receives the attention weights (for attention maps / rollout).
  """
  scale = q.shape[-1] ** -0.5
  logits = jnp.einsum("bqhd,bkhd->bhqk", q * jnp.asarray(scale, q.dtype), k)
  logits = logits.astype(jnp.float32)
  if bias is not None:
    logits = logits + bias
  if mask is not None:
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  weights = jax.nn.softmax(logits, axis=-1)
  if sow_fn is not None:
    sow_fn(weights)
  weights = weights.astype(v.dtype)
  if dropout_fn is not None:
    weights = dropout_fn(weights)
  return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


class Attention(nn.Module):
  """Global multi-head self-attention (Vaswani et al. 2017) over [B, N, D].

  Parameters: `qkv` (D -> 3D, order q, k, v, heads-major inside each) and
  `proj` (D -> D). The attention weights are sown as
  ('intermediates', 'attention') when that collection is mutable.
  """
  num_heads: int
  qkv_bias: bool = True
  attention_dropout: float = 0.0
  dropout: float = 0.0
  dtype: Any = jnp.float32
  kernel_init: Callable = nn.initializers.xavier_uniform()

  @nn.compact
  def __call__(self, x, deterministic: bool = True, bias: Optional[jax.Array] = None,
               mask: Optional[jax.Array] = None):
    b, n, d = x.shape
    if d % self.num_heads:
      raise ValueError(f"width {d} is not divisible by num_heads={self.num_heads}")
    qkv = nn.Dense(3 * d, use_bias=self.qkv_bias, dtype=self.dtype,
                   kernel_init=self.kernel_init, name="qkv")(x)
    q, k, v = jnp.split(qkv.reshape(b, n, 3, self.num_heads, d // self.num_heads), 3, axis=2)
    drop = nn.Dropout(self.attention_dropout)
    out = dot_product_attention(
        q[:, :, 0], k[:, :, 0], v[:, :, 0], bias=bias, mask=mask,
        dropout_fn=lambda w: drop(w, deterministic=deterministic),
        sow_fn=lambda w: self.sow("intermediates", "attention", w))
    out = nn.Dense(d, dtype=self.dtype, kernel_init=self.kernel_init, name="proj")(
        out.reshape(b, n, d))
    return nn.Dropout(self.dropout)(out, deterministic=deterministic)
