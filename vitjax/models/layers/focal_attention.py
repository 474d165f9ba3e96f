"""Focal self-attention (Yang et al. 2021, "Focal Self-attention for
Local-Global Interactions in Vision Transformers", Sec. 3.2, Fig. 3).

The map is cut into non-overlapping M x M query windows (as Swin's W-MSA).
Every query window attends to keys/values gathered at several focal levels:

- level 0 (fine): its own M x M tokens and the ring of width `expand_size` (e)
  around it, i.e. the (M + 2e)^2 tokens of the window grown by e on each side.
- level l >= 1 (coarse): the map is pooled over sub-windows of side
  s = floor(M / 2^(l-1)) (a learned weighted sum of the s^2 tokens plus a bias,
  initialised to the mean: the paper's / released code's "fc" pooling), giving
  a grid of 2^(l-1) pooled tokens per window side; the window attends to the
  r x r pooled tokens centred on its own 2^(l-1) x 2^(l-1) block, with
  r = focal_window + 2^(l-1) - 1.

Keys that fall outside the map (ring or pooled region at a border) are masked
out (the released code wraps the level-0 ring around the border with a cyclic
roll and keeps 12 duplicated ring tokens; here every key is a distinct, real
position). When the pooled grid (2^(l-1) * map/M tokens of side s) is smaller
than the map, the map is trimmed equally on both sides first, as in the
released code.

Position bias, added to the logits: for the window's own tokens Swin's
relative position bias (table of (2M-1)^2 rows per head, `relative_position_index`);
for the level-0 ring a learned bias per (query, ring key) pair; for pooled
level l a table indexed by the offset between the query's position in its
window and the key's position in its r x r region ((M + r - 1)^2 rows).

The key layout (geometry) is computed once in numpy by `fine_key_indices`
and `pooled_key_indices` and applied with a gather, so the index sets are
explicit and testable.
"""

from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from vitjax.models.layers.attention import dot_product_attention
from vitjax.models.layers.window_attention import (relative_position_index,
                                                   window_partition,
                                                   window_reverse)


def _grid_to_flat(y, x, h, w):
  """Row-major index y*w + x, or -1 where (y, x) lies outside an h x w grid."""
  inside = (y >= 0) & (y < h) & (x >= 0) & (x < w)
  return np.where(inside, y * w + x, -1)


def fine_key_indices(h: int, w: int, window_size: int, expand_size: int) -> np.ndarray:
  """Level-0 keys of every window of an h x w map: int [nW, M^2 + ring].

  Row n (windows row-major, as `window_partition`) lists flat map indices
  (y * w + x): first the window's own M^2 tokens (row-major), then the ring of
  width e around it, row-major over the (M + 2e)^2 square; -1 where the ring
  leaves the map.
  """
  m, e = window_size, expand_size
  off = np.arange(m + 2 * e) - e
  dy, dx = np.meshgrid(off, off, indexing="ij")
  own = (dy >= 0) & (dy < m) & (dx >= 0) & (dx < m)
  dy = np.concatenate([dy[own], dy[~own]])
  dx = np.concatenate([dx[own], dx[~own]])
  wy, wx = np.meshgrid(np.arange(h // m) * m, np.arange(w // m) * m, indexing="ij")
  return _grid_to_flat(wy.reshape(-1, 1) + dy, wx.reshape(-1, 1) + dx, h, w)


def pooled_region_size(focal_window: int, level: int) -> int:
  """r: side of the pooled region a window attends to at `level` >= 1."""
  return focal_window + 2 ** (level - 1) - 1


def pooled_key_indices(windows_h: int, windows_w: int, level: int,
                       focal_window: int) -> np.ndarray:
  """Pooled keys of every window at `level` >= 1: int [nW, r^2].

  The pooled grid has 2^(level-1) tokens per window side, i.e.
  (windows_h * 2^(level-1)) x (windows_w * 2^(level-1)) tokens; window (i, j)
  sees the r x r of them (r = `pooled_region_size`) centred on its own
  2^(level-1) x 2^(level-1) block: rows i*2^(level-1) - (focal_window-1)/2
  + [0, r). Flat indices are row-major in the pooled grid, -1 outside it.
  """
  step = 2 ** (level - 1)
  r = pooled_region_size(focal_window, level)
  gh, gw = windows_h * step, windows_w * step
  off = np.arange(r) - (focal_window - 1) // 2
  dy, dx = np.meshgrid(off, off, indexing="ij")
  wy, wx = np.meshgrid(np.arange(windows_h) * step, np.arange(windows_w) * step, indexing="ij")
  return _grid_to_flat(wy.reshape(-1, 1) + dy.reshape(-1), wx.reshape(-1, 1) + dx.reshape(-1),
                       gh, gw)


def cross_relative_position_index(q_size: int, k_size: int) -> np.ndarray:
  """[q^2, k^2] rows of a (q + k - 1)^2 bias table for the offset between a
  token of a q x q window and a token of a k x k region (both row-major):
  (dy + k - 1) * (q + k - 1) + (dx + k - 1). Equals `relative_position_index`
  when q == k."""
  def coords(n):
    return np.stack(np.meshgrid(np.arange(n), np.arange(n), indexing="ij")).reshape(2, -1)
  rel = coords(q_size)[:, :, None] - coords(k_size)[:, None, :] + (k_size - 1)
  return rel[0] * (q_size + k_size - 1) + rel[1]


def trim_to(x, h: int, w: int):
  """Centre-crops an NHWC map to h x w (the extra row / column, if odd, is
  taken from the bottom / right)."""
  top = (x.shape[1] - h) // 2
  left = (x.shape[2] - w) // 2
  return x[:, top:top + h, left:left + w]


class FocalAttention(nn.Module):
  """Focal self-attention over an NHWC map whose sides divide by M.

  focal_level: number of levels, the fine one included (2: fine + one pooled
  level, the released models; 3: two pooled levels). focal_window: the pooled
  region side at level 1 (odd). expand_size: e of the level-0 ring.
  Parameters: `qkv` (fused; also applied to the pooled tokens, whose q is
  unused), `proj`, `relative_position_bias_table` [(2M-1)^2, heads],
  `relative_position_bias_table_to_neighbors` [M^2, ring, heads] (e > 0),
  and per pooled level l: `pool_{l}` (kernel [s^2], bias []) and
  `relative_position_bias_table_to_windows_{l}` [(M + r - 1)^2, heads].
  The attention weights are sown as ('intermediates', 'attention').
  """
  num_heads: int
  window_size: int
  expand_size: int = 0
  focal_level: int = 2
  focal_window: int = 1
  qkv_bias: bool = True
  attention_dropout: float = 0.0
  dropout: float = 0.0
  dtype: Any = jnp.float32
  kernel_init: Callable = nn.initializers.truncated_normal(stddev=0.02)

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    b, h, w, c = x.shape
    m, e, heads = self.window_size, self.expand_size, self.num_heads
    hd = c // heads
    nwh, nww = h // m, w // m
    nw = nwh * nww
    bias_init = nn.initializers.truncated_normal(stddev=0.02)
    qkv = nn.Dense(3 * c, use_bias=self.qkv_bias, dtype=self.dtype,
                   kernel_init=self.kernel_init, name="qkv")

    def gather(t, idx):
      """t: [B, n, C] -> [B*nW, keys, heads, hd] at idx (-1 -> a zero row)."""
      t = jnp.concatenate([t, jnp.zeros_like(t[:, :1])], axis=1)
      t = t[:, np.where(idx < 0, t.shape[1] - 1, idx)]  # [B, nW, keys, C]
      return t.reshape(b * nw, idx.shape[1], heads, hd)

    q, k, v = jnp.split(qkv(x), 3, axis=-1)
    q = window_partition(q, m).reshape(b * nw, m * m, heads, hd)

    # Level 0: the window and its ring.
    idx = fine_key_indices(h, w, m, e)
    keys, values, valid = [gather(k.reshape(b, h * w, c), idx)], [
        gather(v.reshape(b, h * w, c), idx)], [idx >= 0]
    table = self.param("relative_position_bias_table", bias_init, ((2 * m - 1) ** 2, heads))
    biases = [table[relative_position_index(m).reshape(-1)].reshape(m * m, m * m, heads)]
    if e > 0:
      biases.append(self.param("relative_position_bias_table_to_neighbors", bias_init,
                               (m * m, idx.shape[1] - m * m, heads)))

    # Levels 1..L-1: pooled sub-windows around the window.
    for level in range(1, self.focal_level):
      step = 2 ** (level - 1)
      s = m // step
      gh, gw = nwh * step, nww * step
      sub = trim_to(x, gh * s, gw * s).reshape(b, gh, s, gw, s, c)
      pool_w = self.param(f"pool_{level}_kernel",
                          nn.initializers.constant(1.0 / (s * s)), (s * s,))
      pool_b = self.param(f"pool_{level}_bias", nn.initializers.zeros, ())
      pooled = jnp.einsum("bysxtc,st->byxc", sub,
                          pool_w.reshape(s, s).astype(x.dtype)) + pool_b.astype(x.dtype)
      _, kp, vp = jnp.split(qkv(pooled), 3, axis=-1)
      idx = pooled_key_indices(nwh, nww, level, self.focal_window)
      keys.append(gather(kp.reshape(b, gh * gw, c), idx))
      values.append(gather(vp.reshape(b, gh * gw, c), idx))
      valid.append(idx >= 0)
      r = pooled_region_size(self.focal_window, level)
      table = self.param(f"relative_position_bias_table_to_windows_{level}", bias_init,
                         ((m + r - 1) ** 2, heads))
      biases.append(table[cross_relative_position_index(m, r).reshape(-1)].reshape(
          m * m, r * r, heads))

    keys = jnp.concatenate(keys, axis=1)
    values = jnp.concatenate(values, axis=1)
    bias = jnp.concatenate(biases, axis=1).transpose(2, 0, 1).astype(jnp.float32)[None]
    valid = np.concatenate(valid, axis=1)  # [nW, keys]
    mask = None
    if not valid.all():
      mask = jnp.broadcast_to(jnp.asarray(valid)[None, :, None, None, :],
                              (b, nw, 1, 1, valid.shape[1])).reshape(b * nw, 1, 1, -1)
    drop = nn.Dropout(self.attention_dropout)
    out = dot_product_attention(
        q, keys, values, bias=bias, mask=mask,
        dropout_fn=lambda a: drop(a, deterministic=deterministic),
        sow_fn=lambda a: self.sow("intermediates", "attention", a))
    out = nn.Dense(c, dtype=self.dtype, kernel_init=self.kernel_init, name="proj")(
        out.reshape(b * nw, m * m, c))
    out = nn.Dropout(self.dropout)(out, deterministic=deterministic)
    return window_reverse(out, m, h, w)


def focal_num_keys(window_size: int, expand_size: int, focal_level: int,
                   focal_window: int) -> int:
  """Keys per query window (masked border keys included)."""
  n = (window_size + 2 * expand_size) ** 2
  return n + sum(pooled_region_size(focal_window, l) ** 2 for l in range(1, focal_level))


__all__ = ["FocalAttention", "cross_relative_position_index", "fine_key_indices",
           "focal_num_keys", "pooled_key_indices", "pooled_region_size", "trim_to"]
