"""2D (dilated) neighborhood attention (Hassani et al. 2022, "Neighborhood
Attention Transformer", Sec. 3.1; Hassani & Shi 2022, "Dilated Neighborhood
Attention Transformer", Sec. 3).

Every query attends to a k x k neighbourhood of keys around it. At the
border the window does not shrink and nothing is padded: its start is
clamped so that the window stays inside the map, i.e. a query near the edge
attends to the nearest full window (NAT Fig. 3). With dilation d the keys are
every d-th position: the map splits into d x d interleaved groups
(positions congruent mod d), and the clamping happens inside a query's group.
This needs k * d <= map side on both axes.

Relative position bias (NAT Sec. 3.1): a table B of (heads, 2k-1, 2k-1)
entries indexed by the key's offset from the query counted in steps of the
dilation, (key - query) / d + k - 1 per axis; at a clamped border the offsets
run beyond +-(k-1)/2 and the outer table rows are read (natten's
`get_pb_start`).

Cost: the neighbour indices are fixed integers per axis (length x k); keys and
values are gathered along rows then columns, so time and memory grow as
N * k^2, linearly in the number of tokens N; no N x N mask or score matrix
is built.

Layout as natten: q, k, v are [B, H, W, heads, head_dim].
"""

import functools
from typing import Any, Callable, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vitjax.errors import UserError


def _largest_odd_at_most(n: int) -> int:
  return n if n % 2 else n - 1


def check_neighborhood(height: int, width: int, kernel_size: int, dilation: int = 1,
                       where: str = ""):
  """Raises UserError unless a (kernel_size, dilation) neighbourhood fits an
  height x width map: kernel odd and >= 1, dilation >= 1,
  kernel_size * dilation <= min(height, width)."""
  at = f" ({where})" if where else ""
  if not isinstance(kernel_size, (int, np.integer)) or kernel_size < 1 or kernel_size % 2 == 0:
    near = (" Nearest valid kernel sizes: "
            f"{', '.join(str(s) for s in (kernel_size - 1, kernel_size + 1) if s >= 1)}."
            if isinstance(kernel_size, (int, np.integer)) else "")
    raise UserError(f"Neighborhood attention{at}: kernel_size must be an odd integer >= 1 "
                    f"(the window is centred on the query), got {kernel_size!r}.{near}")
  if not isinstance(dilation, (int, np.integer)) or dilation < 1:
    raise UserError(f"Neighborhood attention{at}: dilation must be an integer >= 1, "
                    f"got {dilation!r}.")
  side = min(height, width)
  if kernel_size * dilation > side:
    k_ok = _largest_odd_at_most(side // dilation)
    d_ok = side // kernel_size
    hints = [f"a map side >= {kernel_size * dilation}"]
    if k_ok >= 1:
      hints.append(f"kernel_size <= {k_ok} at dilation {dilation}")
    if d_ok >= 1:
      hints.append(f"dilation <= {d_ok} at kernel_size {kernel_size}")
    raise UserError(
        f"Neighborhood attention{at}: kernel_size * dilation = {kernel_size} * {dilation} = "
        f"{kernel_size * dilation} is larger than the {height}x{width} feature map (each "
        f"query needs a full window of {kernel_size} keys spaced {dilation} apart inside "
        f"the map). Use {' or '.join(hints)}.")


@functools.lru_cache(maxsize=None)
def neighborhood_indices(length: int, kernel_size: int, dilation: int = 1
                         ) -> Tuple[np.ndarray, np.ndarray]:
  """(keys, bias) int arrays of shape [length, kernel_size] along one axis.

  keys[i, j]: position of query i's j-th neighbour; bias[i, j]: its row in a
  2k-1 relative position bias table. Query i lies in group m = i mod d at
  group position g = i // d; its group holds ceil((length - m) / d)
  positions and the window start (in group positions) is g - k//2 clamped to
  [0, group length - k].
  """
  check_neighborhood(length, length, kernel_size, dilation)
  k, d = kernel_size, dilation
  i = np.arange(length)
  g, m = i // d, i % d
  group_len = (length - m + d - 1) // d
  start = np.clip(g - k // 2, 0, group_len - k)
  j = np.arange(k)
  keys = (start[:, None] + j) * d + m[:, None]
  bias = start[:, None] - g[:, None] + j + (k - 1)
  keys.setflags(write=False)
  bias.setflags(write=False)
  return keys, bias


def neighborhood_bias(rpb, height: int, width: int, kernel_size: int, dilation: int = 1):
  """The relative position bias of every query's window: rpb [heads, 2k-1,
  2k-1] -> [H, W, heads, k, k]."""
  _, bh = neighborhood_indices(height, kernel_size, dilation)
  _, bw = neighborhood_indices(width, kernel_size, dilation)
  b = rpb[:, bh[:, :, None, None], bw[None, None, :, :]]  # [heads, H, k, W, k]
  return b.transpose(1, 3, 0, 2, 4)


def _gather_neighbors(x, height_idx, width_idx):
  """[B, H, W, ...] -> [B, H, W, k, k, ...]: the k x k neighbours of each
  position (rows gathered first, then columns)."""
  b, h, w = x.shape[:3]
  kh, kw = height_idx.shape[1], width_idx.shape[1]
  rest = x.shape[3:]
  x = jnp.take(x, height_idx.reshape(-1), axis=1).reshape(b, h, kh, w, *rest)
  x = jnp.take(x, width_idx.reshape(-1), axis=3).reshape(b, h, kh, w, kw, *rest)
  return jnp.moveaxis(x, 3, 2)  # [B, H, W, kh, kw, ...]


def neighborhood_attention(q, k, v, *, kernel_size: int, dilation: int = 1, rpb=None,
                           scale: Optional[float] = None,
                           dropout_fn: Optional[Callable] = None,
                           sow_fn: Optional[Callable] = None):
  """softmax(q k^T * scale + rpb) v over each query's (dilated) k x k
  neighbourhood; q, k, v: [B, H, W, heads, head_dim] -> same shape as q.

  `rpb`: optional [heads, 2k-1, 2k-1] relative position bias table. `scale`
  defaults to head_dim ** -0.5. The softmax runs in float32; `sow_fn`
  receives the weights [B, H, W, heads, k, k]. Raises UserError when the
  kernel / dilation does not fit the map (see `check_neighborhood`).
  """
  _, h, w, heads, dim = q.shape
  check_neighborhood(h, w, kernel_size, dilation)
  if rpb is not None and rpb.shape != (heads, 2 * kernel_size - 1, 2 * kernel_size - 1):
    raise ValueError(f"rpb must be [{heads}, {2 * kernel_size - 1}, {2 * kernel_size - 1}] "
                     f"for {heads} heads and kernel {kernel_size}, got {rpb.shape}")
  ih, _ = neighborhood_indices(h, kernel_size, dilation)
  iw, _ = neighborhood_indices(w, kernel_size, dilation)
  scale = dim ** -0.5 if scale is None else scale
  keys = _gather_neighbors(k, ih, iw)  # [B, H, W, k, k, heads, dim]
  logits = jnp.einsum("bxyhd,bxyijhd->bxyhij", q * jnp.asarray(scale, q.dtype), keys)
  logits = logits.astype(jnp.float32)
  if rpb is not None:
    logits = logits + neighborhood_bias(rpb.astype(jnp.float32), h, w, kernel_size, dilation)
  n = kernel_size * kernel_size
  weights = jax.nn.softmax(logits.reshape(*logits.shape[:4], n), axis=-1)
  weights = weights.reshape(logits.shape)
  if sow_fn is not None:
    sow_fn(weights)
  weights = weights.astype(v.dtype)
  if dropout_fn is not None:
    weights = dropout_fn(weights)
  values = _gather_neighbors(v, ih, iw)
  return jnp.einsum("bxyhij,bxyijhd->bxyhd", weights, values)


class NeighborhoodAttention(nn.Module):
  """Multi-head 2D neighborhood attention over an NHWC map (NAT Sec. 3.1).

  Parameters: `qkv` (C -> 3C, order q, k, v, heads-major inside each), `rpb`
  ([heads, 2k-1, 2k-1], truncated normal 0.02) and `proj` (C -> C). The
  weights are sown as ('intermediates', 'attention') when that collection is
  mutable.
  """
  num_heads: int
  kernel_size: int = 7
  dilation: int = 1
  qkv_bias: bool = True
  attention_dropout: float = 0.0
  dropout: float = 0.0
  dtype: Any = jnp.float32
  kernel_init: Callable = nn.initializers.truncated_normal(stddev=0.02)

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    b, h, w, c = x.shape
    if c % self.num_heads:
      raise UserError(f"Neighborhood attention: width {c} is not divisible by "
                      f"num_heads={self.num_heads}.")
    check_neighborhood(h, w, self.kernel_size, self.dilation)
    qkv = nn.Dense(3 * c, use_bias=self.qkv_bias, dtype=self.dtype,
                   kernel_init=self.kernel_init, name="qkv")(x)
    qkv = qkv.reshape(b, h, w, 3, self.num_heads, c // self.num_heads)
    m = 2 * self.kernel_size - 1
    rpb = self.param("rpb", nn.initializers.truncated_normal(stddev=0.02),
                     (self.num_heads, m, m))
    drop = nn.Dropout(self.attention_dropout)
    y = neighborhood_attention(
        qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :],
        kernel_size=self.kernel_size, dilation=self.dilation, rpb=rpb,
        dropout_fn=lambda a: drop(a, deterministic=deterministic),
        sow_fn=lambda a: self.sow("intermediates", "attention", a))
    y = nn.Dense(c, dtype=self.dtype, kernel_init=self.kernel_init, name="proj")(
        y.reshape(b, h, w, c))
    return nn.Dropout(self.dropout)(y, deterministic=deterministic)
