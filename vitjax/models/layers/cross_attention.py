"""Class-token cross-attention (Chen et al. 2021, CrossViT, Sec. 3.3)."""

from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from vitjax.models.layers.attention import dot_product_attention


class ClassTokenCrossAttention(nn.Module):
  """The first token of [B, N, D] is the only query; keys and values are all
  N tokens (the query token included). Returns [B, 1, D].

  Linear in N (one query), which is what makes CrossViT's fusion cheap.
  Parameters: `wq`, `wk`, `wv` (D -> D each) and `proj`. The attention
  weights are sown as ('intermediates', 'attention').
  """
  num_heads: int
  qkv_bias: bool = True
  attention_dropout: float = 0.0
  dropout: float = 0.0
  dtype: Any = jnp.float32
  kernel_init: Callable = nn.initializers.xavier_uniform()

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    b, n, d = x.shape
    if d % self.num_heads:
      raise ValueError(f"width {d} is not divisible by num_heads={self.num_heads}")
    hd = d // self.num_heads
    dense = lambda name: nn.Dense(d, use_bias=self.qkv_bias, dtype=self.dtype,
                                  kernel_init=self.kernel_init, name=name)
    q = dense("wq")(x[:, :1]).reshape(b, 1, self.num_heads, hd)
    k = dense("wk")(x).reshape(b, n, self.num_heads, hd)
    v = dense("wv")(x).reshape(b, n, self.num_heads, hd)
    drop = nn.Dropout(self.attention_dropout)
    out = dot_product_attention(
        q, k, v, dropout_fn=lambda w: drop(w, deterministic=deterministic),
        sow_fn=lambda w: self.sow("intermediates", "attention", w))
    out = nn.Dense(d, dtype=self.dtype, kernel_init=self.kernel_init, name="proj")(
        out.reshape(b, 1, d))
    return nn.Dropout(self.dropout)(out, deterministic=deterministic)
