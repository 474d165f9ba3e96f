"""Multi-scale deformable attention (Zhu et al. 2021, "Deformable DETR", Sec. 4.1).

Each query attends to a handful of sampled points instead of every key:

  MSDeformAttn(z_q, p_q, {x_l}) = W_o sum_h sum_l sum_k A_hlqk * W_v x_l(phi_l(p_q) + dp_hlqk)

The offsets dp and the weights A (softmax over the L*K points of a head) are
linear functions of the query z_q; x_l(p) is the value map of level l read at a
fractional position by bilinear interpolation.

`ms_deform_attn_core` is the sampling + weighting step alone (the function the
authors wrote a CUDA kernel for). It follows `torch.nn.functional.grid_sample`
with `align_corners=False` and zero padding: a location (x, y) in [0, 1] is the
pixel position (x * W - 0.5, y * H - 0.5), and corners outside the map read
zero. It is written with gathers: for every (query, head, level, point) the four
neighbouring value vectors are fetched by flat index and blended, so nothing of
size [queries, keys] is formed. Cost: B * Q * H * L * K * 4 gathers of a
head-sized vector (D / H floats) plus as many multiply-adds per channel, i.e.
O(B * Q * L * K * 4 * D) time and memory for the gathered corners, linear in the
number of queries and independent of the map sizes (the value maps are only read
at the sampled points). The backward pass of a gather is a scatter-add into the
value maps (XLA's transpose of the gather), of the same size.

`MSDeformableAttention` is the module of the paper (offsets, weights, value and
output projections; parameter names as in the reference implementation).
"""

from typing import Any, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def ms_deform_attn_core(value, spatial_shapes: Sequence[Tuple[int, int]],
                        sampling_locations, attention_weights):
  """Bilinear sampling of L value maps at K points per head, weighted and summed.

  value: [B, S, H, Dh], the L maps flattened row-major and concatenated
    (S = sum of h_l * w_l).
  spatial_shapes: the L static (h_l, w_l).
  sampling_locations: [B, Q, H, L, K, 2], (x, y) in [0, 1] of each map
    (outside it is allowed: those corners read zero).
  attention_weights: [B, Q, H, L, K].
  Returns [B, Q, H * Dh].
  """
  b, s, nh, dh = value.shape
  _, q, _, nl, nk, _ = sampling_locations.shape
  shapes = [tuple(int(v) for v in hw) for hw in spatial_shapes]
  if len(shapes) != nl or sum(h * w for h, w in shapes) != s:
    raise ValueError(f"spatial_shapes {shapes} do not match {nl} levels and {s} value "
                     "positions")
  value = jnp.transpose(value, (0, 2, 1, 3))                      # [B, H, S, Dh]
  loc = jnp.transpose(sampling_locations, (0, 2, 1, 3, 4, 5))      # [B, H, Q, L, K, 2]
  attn = jnp.transpose(attention_weights, (0, 2, 1, 3, 4))         # [B, H, Q, L, K]
  idx_all, w_all = [], []
  start = 0
  for lvl, (h, w) in enumerate(shapes):
    x = loc[..., lvl, :, 0] * w - 0.5                              # [B, H, Q, K]
    y = loc[..., lvl, :, 1] * h - 0.5
    x0, y0 = jnp.floor(x), jnp.floor(y)
    fx, fy = x - x0, y - y0
    a = attn[..., lvl, :]
    for dy, wy in ((0, 1 - fy), (1, fy)):
      for dx, wx in ((0, 1 - fx), (1, fx)):
        xi, yi = x0 + dx, y0 + dy
        inside = (xi >= 0) & (xi <= w - 1) & (yi >= 0) & (yi <= h - 1)
        flat = (jnp.clip(yi, 0, h - 1) * w + jnp.clip(xi, 0, w - 1)).astype(jnp.int32)
        idx_all.append(flat + start)
        w_all.append(jnp.where(inside, wx * wy * a, 0.0))
    start += h * w
  idx = jnp.concatenate(idx_all, axis=-1).reshape(b, nh, q * nl * nk * 4)
  wts = jnp.concatenate(w_all, axis=-1)                            # [B, H, Q, 4LK]
  corners = jnp.take_along_axis(value, idx[..., None], axis=2)     # [B, H, Q*4LK, Dh]
  corners = corners.reshape(b, nh, q, nl * nk * 4, dh)
  out = jnp.einsum("bhqpd,bhqp->bqhd", corners, wts.astype(value.dtype))
  return out.reshape(b, q, nh * dh)


def _offset_bias_init(num_heads: int, num_levels: int, num_points: int):
  """The paper's offset bias: head h points along angle 2*pi*h/H, point k at k+1."""
  def init(key, shape, dtype=jnp.float32):
    del key
    theta = np.arange(num_heads) * (2.0 * np.pi / num_heads)
    grid = np.stack([np.cos(theta), np.sin(theta)], -1)
    grid = grid / np.abs(grid).max(-1, keepdims=True)
    grid = np.tile(grid[:, None, None], (1, num_levels, num_points, 1))
    grid = grid * np.arange(1, num_points + 1)[None, None, :, None]
    return jnp.asarray(grid.reshape(shape), dtype)
  return init


class MSDeformableAttention(nn.Module):
  """Multi-scale deformable attention over [B, Q, D] queries.

  Parameters (as in the reference implementation): `sampling_offsets`
  (D -> H*L*K*2), `attention_weights` (D -> H*L*K), `value_proj`, `output_proj`.
  `__call__(query, value_input, reference_points, spatial_shapes, value_mask)`:
  reference_points [B, Q, L, 2] (x, y) or [B, Q, L, 4] (cx, cy, w, h) in [0, 1];
  with boxes the offsets are scaled by half the box size / K (Sec. A.4 of the
  paper), with points by the level's size. `value_mask` [B, S] (True = valid) zeroes
  padded positions.
  """
  num_heads: int = 8
  num_levels: int = 4
  num_points: int = 4
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, query, value_input, reference_points,
               spatial_shapes: Sequence[Tuple[int, int]], value_mask=None):
    b, q, d = query.shape
    nh, nl, nk = self.num_heads, self.num_levels, self.num_points
    if d % nh:
      raise ValueError(f"width {d} is not divisible by num_heads={nh}")
    xavier = nn.initializers.xavier_uniform()
    value = nn.Dense(d, dtype=self.dtype, kernel_init=xavier, name="value_proj")(value_input)
    if value_mask is not None:
      value = jnp.where(value_mask[..., None], value, 0.0)
    value = value.reshape(b, value.shape[1], nh, d // nh)
    offsets = nn.Dense(nh * nl * nk * 2, dtype=self.dtype, kernel_init=nn.initializers.zeros,
                       bias_init=_offset_bias_init(nh, nl, nk), name="sampling_offsets")(query)
    offsets = offsets.reshape(b, q, nh, nl, nk, 2)
    weights = nn.Dense(nh * nl * nk, dtype=self.dtype, kernel_init=nn.initializers.zeros,
                       name="attention_weights")(query)
    weights = jax.nn.softmax(weights.reshape(b, q, nh, nl * nk).astype(jnp.float32), -1)
    weights = weights.reshape(b, q, nh, nl, nk).astype(self.dtype)
    ref = reference_points[:, :, None, :, None, :]
    if reference_points.shape[-1] == 2:
      normalizer = jnp.asarray([[w, h] for h, w in spatial_shapes], offsets.dtype)
      locations = ref + offsets / normalizer[None, None, None, :, None, :]
    elif reference_points.shape[-1] == 4:
      locations = ref[..., :2] + offsets / nk * ref[..., 2:] * 0.5
    else:
      raise ValueError(f"reference points end in 2 or 4 coordinates, got "
                       f"{reference_points.shape[-1]}")
    out = ms_deform_attn_core(value, spatial_shapes, locations, weights)
    return nn.Dense(d, dtype=self.dtype, kernel_init=xavier, name="output_proj")(out)
