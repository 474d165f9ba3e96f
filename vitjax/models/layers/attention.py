"""Multi-head self-attention with a fused qkv projection.

`dot_product_attention(..., impl=...)` picks how softmax(q k^T / sqrt(d)) v is
computed; all give the same result (fp32 softmax):
  'einsum'  explicit logits and weights (the only one that can hand the
            attention weights to `sow_fn` and apply attention dropout);
  'xla', 'cudnn'  `jax.nn.dot_product_attention` with that implementation
            ('cudnn': fused flash attention, GPU, fp16/bf16 only);
  'fused'   'cudnn' where it applies (GPU, fp16/bf16, head dim <= 128), else 'xla';
  'chunked' queries in blocks of `chunk_size`, one block at a time
            (`lax.map`, each block rematerialised in the backward pass): the
            [Nq, Nk] matrix is never materialised whole, only [chunk, Nk];
  'auto'    'einsum' when the weights are wanted or dropped out, 'chunked' for
            sequences longer than `CHUNK_ABOVE` tokens, else 'cudnn' where it
            applies and 'einsum' elsewhere (on XLA:CPU the head-major einsum
            beats 'xla' by 2-9% in the ViT-S/16 step, experiments/RESULTS.md).
"""

import warnings
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

IMPLS = ("auto", "einsum", "xla", "cudnn", "fused", "chunked")
CHUNK_ABOVE = 2048   # 'auto' switches to 'chunked' above this many query tokens


def _einsum_attention(q, k, v, bias, mask, dropout_fn, sow_fn):
  scale = q.shape[-1] ** -0.5
  # Head-major [B, H, N, d] operands: both products become plain batched
  # matmuls over (B, H). XLA:CPU runs them 1.2-1.9x faster than with the
  # heads left in the middle (experiments/RESULTS.md, "CPU profile").
  q, k, v = (t.swapaxes(1, 2) for t in (q, k, v))
  logits = jnp.einsum("bhqd,bhkd->bhqk", q * jnp.asarray(scale, q.dtype), k)
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
  return jnp.einsum("bhqk,bhkd->bhqd", weights, v).swapaxes(1, 2)


def _query_blocks(t, nq, chunk, axis):
  """Splits `t` (None, or broadcasting over queries at `axis`) into
  [num_chunks, ...] blocks of `chunk` queries; a size-1 axis is shared."""
  if t is None or t.shape[axis] == 1:
    return None
  pad = -nq % chunk
  if pad:
    widths = [(0, 0)] * t.ndim
    widths[axis] = (0, pad)
    t = jnp.pad(t, widths)
  t = t.reshape(t.shape[:axis] + (-1, chunk) + t.shape[axis + 1:])
  return jnp.moveaxis(t, axis, 0)


def chunked_dot_product_attention(q, k, v, bias=None, mask=None, chunk_size=512):
  """`dot_product_attention` over blocks of `chunk_size` queries ([B, N, H, d]).

  Each block sees every key, so its softmax is exact; peak memory holds the
  logits of one block, [B, H, chunk, Nk], instead of [B, H, Nq, Nk]. The
  block function is rematerialised (`jax.checkpoint`), so the backward pass
  does not keep every block's weights either.
  """
  b, nq, h, d = q.shape
  if nq <= chunk_size:
    return _einsum_attention(q, k, v, bias, mask, None, None)
  bias = None if bias is None else jnp.asarray(bias)
  mask = None if mask is None else jnp.asarray(mask)
  q_blocks = _query_blocks(q, nq, chunk_size, 1)           # [C, B, c, H, d]
  bias_blocks = _query_blocks(bias, nq, chunk_size, bias.ndim - 2) if bias is not None else None
  mask_blocks = _query_blocks(mask, nq, chunk_size, mask.ndim - 2) if mask is not None else None

  @jax.checkpoint
  def block(args):
    qb, bb, mb = args
    return _einsum_attention(qb, k, v, bias if bb is None and bias is not None else bb,
                             mask if mb is None and mask is not None else mb, None, None)

  out = jax.lax.map(block, (q_blocks, bias_blocks, mask_blocks))  # [C, B, c, H, d]
  out = jnp.moveaxis(out, 0, 1).reshape(b, -1, h, d)
  return out[:, :nq]


def dot_product_attention(q, k, v, bias=None, mask=None, dropout_fn=None,
                          sow_fn=None, impl: str = "einsum", chunk_size: int = 512):
  """softmax(q k^T / sqrt(d) + bias) v over [B, N, H, d] inputs.

  `bias` broadcasts to [B, H, Nq, Nk] (e.g. a relative position bias), `mask`
  is True where attention is allowed. The softmax runs in float32. `sow_fn`,
  if given, receives the attention weights (for attention maps / rollout);
  it and `dropout_fn` force the 'einsum' formulation. `impl`: see the module
  docstring.
  """
  if impl not in IMPLS:
    raise ValueError(f"attention impl must be one of {IMPLS}, got {impl!r}")
  if impl == "auto":
    if dropout_fn is not None or sow_fn is not None:
      impl = "einsum"
    else:
      impl = ("chunked" if q.shape[1] > CHUNK_ABOVE
              else "fused" if _cudnn_applies(q) else "einsum")
  if impl == "einsum" or dropout_fn is not None or sow_fn is not None:
    return _einsum_attention(q, k, v, bias, mask, dropout_fn, sow_fn)
  if impl == "chunked":
    return chunked_dot_product_attention(q, k, v, bias, mask, chunk_size)
  if bias is not None:
    bias = jnp.broadcast_to(bias, bias.shape[:-2] + (q.shape[1], k.shape[1]))
    bias = bias.reshape((1,) * (4 - bias.ndim) + bias.shape)
  if mask is not None:
    mask = jnp.asarray(mask)
    mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
  if impl == "fused":
    if _cudnn_applies(q):
      try:
        return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask,
                                            implementation="cudnn").astype(v.dtype)
      except Exception as e:  # pylint: disable=broad-except
        # A shape / dtype / cuDNN version cuDNN refuses: the XLA formulation.
        warnings.warn(f"attention impl 'fused': cuDNN refused ({type(e).__name__}: "
                      f"{str(e)[:200]}); using the XLA formulation")
    impl = "xla"
  return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask,
                                      implementation=impl).astype(v.dtype)


def _cudnn_applies(q):
  """cuDNN's fused attention: on a GPU, fp16 / bf16, head dim a multiple of 8 <= 128."""
  d = q.shape[-1]
  return (jax.default_backend() == "gpu" and q.dtype in (jnp.bfloat16, jnp.float16)
          and d % 8 == 0 and d <= 128)


class Attention(nn.Module):
  """Global multi-head self-attention (Vaswani et al. 2017) over [B, N, D].

  Parameters: `qkv` (D -> 3D, order q, k, v, heads-major inside each) and
  `proj` (D -> D). The attention weights are sown as
  ('intermediates', 'attention') when that collection is mutable (this uses
  the 'einsum' formulation whatever `impl` says).
  impl: how the attention is computed (`dot_product_attention`); the
    parameters and the result do not depend on it.
  head_dim: None (default) splits the width D into `num_heads` heads; an int
    gives `num_heads` heads of that size whatever D is (qkv: D -> 3 * H * head_dim,
    proj: H * head_dim -> D), e.g. a layer with some heads pruned away.
  """
  num_heads: int
  qkv_bias: bool = True
  attention_dropout: float = 0.0
  dropout: float = 0.0
  dtype: Any = jnp.float32
  kernel_init: Callable = nn.initializers.xavier_uniform()
  impl: str = "einsum"
  head_dim: Optional[int] = None

  @nn.compact
  def __call__(self, x, deterministic: bool = True, bias: Optional[jax.Array] = None,
               mask: Optional[jax.Array] = None, return_keys: bool = False):
    """[B, N, D] -> [B, N, D]; with `return_keys`, (output, keys [B, N, H, d])
    (the keys are the similarity metric of token merging, compress/tome.py)."""
    b, n, d = x.shape
    if self.head_dim is None and d % self.num_heads:
      raise ValueError(f"width {d} is not divisible by num_heads={self.num_heads}")
    head_dim = self.head_dim or d // self.num_heads
    inner = self.num_heads * head_dim
    qkv = nn.Dense(3 * inner, use_bias=self.qkv_bias, dtype=self.dtype,
                   kernel_init=self.kernel_init, name="qkv")(x)
    q, k, v = jnp.split(qkv.reshape(b, n, 3, self.num_heads, head_dim), 3, axis=2)
    drop = nn.Dropout(self.attention_dropout)
    dropping = self.attention_dropout > 0 and not deterministic
    sowing = self.is_mutable_collection("intermediates")
    out = dot_product_attention(
        q[:, :, 0], k[:, :, 0], v[:, :, 0], bias=bias, mask=mask,
        dropout_fn=(lambda w: drop(w, deterministic=deterministic)) if dropping else None,
        sow_fn=(lambda w: self.sow("intermediates", "attention", w)) if sowing else None,
        impl=self.impl)
    out = nn.Dense(d, dtype=self.dtype, kernel_init=self.kernel_init, name="proj")(
        out.reshape(b, n, inner))
    out = nn.Dropout(self.dropout)(out, deterministic=deterministic)
    return (out, k[:, :, 0]) if return_keys else out
