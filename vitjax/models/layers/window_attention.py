"""Window attention of the Swin Transformers (Liu et al. 2021, 2022).

Swin v1 ("Swin Transformer: Hierarchical Vision Transformer using Shifted
Windows", Sec. 3.2): self-attention inside non-overlapping M x M windows, a
learned relative position bias B (Eq. 4) read from a table of
(2M-1) x (2M-1) entries per head, and, in every second block, windows shifted
by floor(M/2) with a cyclic shift and an attention mask (Fig. 4).

Swin v2 ("Swin Transformer V2: Scaling Up Capacity and Resolution",
Sec. 3.2-3.3): scaled cosine attention, Sim(q, k) = cos(q, k) / tau + B, with
a learnable per-head temperature (here `logit_scale` = log(1/tau), clamped at
log(100)), and a continuous position bias: a 2-layer MLP of log-spaced
relative coordinates, squashed to (0, 16) with 16 * sigmoid (as in the
released code). The MLP does not depend on the window size, so a model runs
at another window size without retraining.

Layout: windows are [B * num_windows, M * M, C], windows ordered row-major
over the grid of windows, tokens row-major inside a window.
"""

import math
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vitjax.models.layers.attention import dot_product_attention


def window_partition(x, window_size: int):
  """[B, H, W, C] -> [B * (H/M) * (W/M), M * M, C] (M = window_size)."""
  b, h, w, c = x.shape
  m = window_size
  x = x.reshape(b, h // m, m, w // m, m, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(-1, m * m, c)


def window_reverse(windows, window_size: int, h: int, w: int):
  """Inverse of `window_partition`: [B * nW, M * M, C] -> [B, H, W, C]."""
  m = window_size
  c = windows.shape[-1]
  x = windows.reshape(-1, h // m, w // m, m, m, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(-1, h, w, c)


def relative_position_index(window_size: int) -> np.ndarray:
  """[M*M, M*M] ints: for tokens i, j of a window, the row of the
  (2M-1)^2-entry bias table for their offset (dy, dx) = pos_i - pos_j,
  i.e. (dy + M - 1) * (2M - 1) + (dx + M - 1)."""
  m = window_size
  coords = np.stack(np.meshgrid(np.arange(m), np.arange(m), indexing="ij")).reshape(2, -1)
  rel = coords[:, :, None] - coords[:, None, :] + (m - 1)  # [2, N, N], in [0, 2M-2]
  return rel[0] * (2 * m - 1) + rel[1]


def shifted_window_mask(h: int, w: int, window_size: int, shift: int) -> Optional[np.ndarray]:
  """The attention mask of shifted-window attention (Swin v1 Sec. 3.2, Fig. 4).

  After the map is rolled by -shift on both axes, a window at the bottom or
  right border holds tokens from regions that are not neighbours in the
  image. Each axis is cut into [0, L-M), [L-M, L-shift), [L-shift, L); a token
  may attend to another only if both lie in the same region on both axes.
  Returns bool [num_windows, M*M, M*M], True where attention is allowed, or
  None when shift == 0.
  """
  if shift <= 0:
    return None
  m = window_size
  def regions(n):
    idx = np.arange(n)
    return (idx >= n - m).astype(np.int32) + (idx >= n - shift).astype(np.int32)
  label = regions(h)[:, None] * 3 + regions(w)[None, :]  # [H, W]
  win = label.reshape(h // m, m, w // m, m).transpose(0, 2, 1, 3).reshape(-1, m * m)
  return win[:, :, None] == win[:, None, :]


def resample_relative_position_bias_table(table, new_window_size: int,
                                          old_window_size: Optional[int] = None,
                                          method: str = "bicubic"):
  """Resizes a Swin v1 bias table [(2M-1)^2, heads] to another window size.

  The table is a (2M-1) x (2M-1) image per head; it is interpolated to
  (2M'-1) x (2M'-1) ('bicubic' as in the Swin fine-tuning code, or
  'bilinear'). An unchanged size returns the table itself, exactly.
  """
  table = jnp.asarray(table)
  n, heads = table.shape
  side = int(round(math.sqrt(n)))
  if side * side != n or side % 2 == 0:
    raise ValueError(f"a relative position bias table has (2M-1)^2 rows; got {n}")
  old = old_window_size or (side + 1) // 2
  if 2 * old - 1 != side:
    raise ValueError(f"table of {n} rows is not for window size {old}")
  if old == new_window_size:
    return table
  new_side = 2 * new_window_size - 1
  grid = table.reshape(side, side, heads).astype(jnp.float32)
  grid = jax.image.resize(grid, (new_side, new_side, heads), method=method)
  return grid.reshape(new_side * new_side, heads).astype(table.dtype)


def log_spaced_coords(window_size: int, pretrained_window_size: int = 0) -> np.ndarray:
  """Swin v2 Eq. 4: the (2M-1)^2 relative offsets, normalised to [-8, 8] by
  (pretrained) window size - 1, then sign(x) * log2(1 + |x|) / log2(8).
  [(2M-1)^2, 2] float32, rows in the order of `relative_position_index`."""
  m = window_size
  r = np.arange(-(m - 1), m, dtype=np.float32)
  coords = np.stack(np.meshgrid(r, r, indexing="ij"), axis=-1)  # [2M-1, 2M-1, 2]
  norm = pretrained_window_size if pretrained_window_size > 0 else m
  if norm > 1:
    coords = coords / (norm - 1)
  coords = coords * 8
  coords = np.sign(coords) * np.log2(np.abs(coords) + 1.0) / np.log2(8)
  return coords.reshape(-1, 2).astype(np.float32)


class WindowAttention(nn.Module):
  """Swin v1 window attention: softmax(q k^T / sqrt(d) + B [+ mask]) v.

  Input [B*nW, M*M, C]. Parameters: `qkv` (fused, as `Attention`), `proj`
  and `relative_position_bias_table` [(2M-1)^2, heads] (trunc. normal 0.02).
  `mask`: bool [nW, M*M, M*M] from `shifted_window_mask`, or None.
  """
  num_heads: int
  window_size: int
  qkv_bias: bool = True
  attention_dropout: float = 0.0
  dropout: float = 0.0
  dtype: Any = jnp.float32
  kernel_init: Callable = nn.initializers.truncated_normal(stddev=0.02)

  @nn.compact
  def __call__(self, x, deterministic: bool = True, mask=None):
    bw, n, d = x.shape
    m, heads = self.window_size, self.num_heads
    table = self.param("relative_position_bias_table",
                       nn.initializers.truncated_normal(stddev=0.02),
                       ((2 * m - 1) ** 2, heads))
    bias = table[relative_position_index(m).reshape(-1)].reshape(n, n, heads)
    bias = bias.transpose(2, 0, 1).astype(jnp.float32)[None]  # [1, heads, N, N]
    qkv = nn.Dense(3 * d, use_bias=self.qkv_bias, dtype=self.dtype,
                   kernel_init=self.kernel_init, name="qkv")(x)
    q, k, v = jnp.split(qkv.reshape(bw, n, 3, heads, d // heads), 3, axis=2)
    out = _attend(self, q[:, :, 0], k[:, :, 0], v[:, :, 0], bias, mask, deterministic)
    out = nn.Dense(d, dtype=self.dtype, kernel_init=self.kernel_init, name="proj")(
        out.reshape(bw, n, d))
    return nn.Dropout(self.dropout)(out, deterministic=deterministic)


def _attend(module, q, k, v, bias, mask, deterministic):
  """dot_product_attention over windows, the mask repeated for the batch."""
  if mask is not None:
    nw = mask.shape[0]
    b = q.shape[0] // nw
    n = q.shape[1]
    # [B*nW, 1, N, N]: windows of an image are consecutive (window_partition).
    mask = jnp.broadcast_to(jnp.asarray(mask)[None, :, None], (b, nw, 1, n, n)).reshape(
        b * nw, 1, n, n)
  drop = nn.Dropout(module.attention_dropout)
  return dot_product_attention(
      q, k, v, bias=bias, mask=mask,
      dropout_fn=lambda w: drop(w, deterministic=deterministic),
      sow_fn=lambda w: module.sow("intermediates", "attention", w))


class ContinuousPositionBias(nn.Module):
  """Swin v2 log-spaced continuous position bias: MLP(2 -> hidden -> heads,
  ReLU) of `log_spaced_coords`, gathered to [heads, M*M, M*M] and squashed
  with 16 * sigmoid. Its parameters do not depend on the window size."""
  num_heads: int
  hidden_dim: int = 512
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, window_size: int, pretrained_window_size: int = 0):
    coords = jnp.asarray(log_spaced_coords(window_size, pretrained_window_size))
    h = nn.relu(nn.Dense(self.hidden_dim, dtype=jnp.float32, name="fc1")(coords))
    table = nn.Dense(self.num_heads, use_bias=False, dtype=jnp.float32, name="fc2")(h)
    n = window_size * window_size
    bias = table[relative_position_index(window_size).reshape(-1)].reshape(n, n, -1)
    return 16.0 * jax.nn.sigmoid(bias.transpose(2, 0, 1))


class WindowAttentionV2(nn.Module):
  """Swin v2 window attention: scaled cosine attention + continuous bias.

  logits = cos(q, k) * exp(min(logit_scale, log 100)) + 16 sigmoid(CPB) [+ mask].
  Parameters: `qkv` (no bias), `q_bias` and `v_bias` (the key has no bias,
  as in the paper's code), `logit_scale` [heads] (init log 10), `cpb_mlp`
  (`ContinuousPositionBias`) and `proj`.
  pretrained_window_size: > 0 normalises the CPB coordinates by the window
  the model was pre-trained with (for fine-tuning at a larger window).
  """
  num_heads: int
  window_size: int
  pretrained_window_size: int = 0
  qkv_bias: bool = True
  attention_dropout: float = 0.0
  dropout: float = 0.0
  dtype: Any = jnp.float32
  kernel_init: Callable = nn.initializers.truncated_normal(stddev=0.02)

  @nn.compact
  def __call__(self, x, deterministic: bool = True, mask=None):
    bw, n, d = x.shape
    heads = self.num_heads
    hd = d // heads
    qkv = nn.Dense(3 * d, use_bias=False, dtype=self.dtype, kernel_init=self.kernel_init,
                   name="qkv")(x)
    if self.qkv_bias:
      q_bias = self.param("q_bias", nn.initializers.zeros, (d,))
      v_bias = self.param("v_bias", nn.initializers.zeros, (d,))
      qkv = qkv + jnp.concatenate([q_bias, jnp.zeros_like(q_bias), v_bias]).astype(qkv.dtype)
    q, k, v = jnp.split(qkv.reshape(bw, n, 3, heads, hd), 3, axis=2)
    q, k, v = q[:, :, 0], k[:, :, 0], v[:, :, 0]

    def l2_normalize(t):  # as torch F.normalize: t / max(|t|, 1e-12)
      t = t.astype(jnp.float32)
      return t / jnp.maximum(jnp.linalg.norm(t, axis=-1, keepdims=True), 1e-12)

    logit_scale = self.param("logit_scale", nn.initializers.constant(math.log(10.0)), (heads,))
    scale = jnp.exp(jnp.minimum(logit_scale, math.log(100.0)))
    # dot_product_attention divides by sqrt(head_dim); undo that in the scale.
    q = l2_normalize(q) * (scale * math.sqrt(hd))[:, None]
    k = l2_normalize(k)
    bias = ContinuousPositionBias(heads, name="cpb_mlp")(
        self.window_size, self.pretrained_window_size)[None]
    out = _attend(self, q.astype(v.dtype), k.astype(v.dtype), v, bias, mask, deterministic)
    out = nn.Dense(d, dtype=self.dtype, kernel_init=self.kernel_init, name="proj")(
        out.reshape(bw, n, d))
    return nn.Dropout(self.dropout)(out, deterministic=deterministic)


__all__ = [
    "ContinuousPositionBias", "WindowAttention", "WindowAttentionV2",
    "log_spaced_coords", "relative_position_index",
    "resample_relative_position_bias_table", "shifted_window_mask",
    "window_partition", "window_reverse",
]
