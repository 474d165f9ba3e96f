"""Position embeddings: fixed 2D sin-cos and resampling of learned ones."""

import jax
import jax.numpy as jnp
import numpy as np


def sincos_posemb_2d(h: int, w: int, dim: int, temperature: float = 10_000.0,
                     endpoint: bool = True):
  """2D sin-cos embedding (MoCo v3 / big_vision layout): [1, h*w, dim].

  Frequencies are temperature^-(i / n), i < n = dim // 4; `endpoint` divides
  by n - 1 (MoCo v3, big_vision), `endpoint=False` by n (MAE, HF ViTMAE).
  """
  if dim % 4:
    raise ValueError(f"sin-cos 2D position embedding needs dim % 4 == 0, got {dim}")
  y, x = np.mgrid[:h, :w]
  n = dim // 4
  omega = np.arange(n) / ((n - 1 if n > 1 else 1) if endpoint else n)
  omega = 1.0 / (temperature ** omega)
  y = np.einsum("m,d->md", y.flatten(), omega)
  x = np.einsum("m,d->md", x.flatten(), omega)
  pe = np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)
  return jnp.asarray(pe, jnp.float32)[None]


def resample_posemb(posemb, new_grid, num_prefix_tokens: int = 0,
                    old_grid=None, method: str = "bilinear"):
  """Resizes a learned [1, prefix + h*w, D] position embedding to `new_grid`.

  The prefix tokens (class / distillation) are kept as they are; the grid part
  is interpolated, as needed to fine-tune at another resolution. `method` is
  a jax.image.resize method, or 'bicubic_torch' / 'bilinear_torch' for
  PyTorch's `F.interpolate(..., align_corners=False)` (what HF ViT's
  `interpolate_pos_encoding` and PVT v1 do at call time).
  """
  posemb = jnp.asarray(posemb)
  prefix, grid = posemb[:, :num_prefix_tokens], posemb[:, num_prefix_tokens:]
  n = grid.shape[1]
  if old_grid is None:
    side = int(round(np.sqrt(n)))
    if side * side != n:
      raise ValueError(f"Cannot infer a square grid from {n} position tokens.")
    old_grid = (side, side)
  new_grid = tuple(new_grid)
  if tuple(old_grid) == new_grid:
    return posemb
  d = grid.shape[-1]
  grid = grid.reshape(1, *old_grid, d)
  if method in ("bicubic_torch", "bilinear_torch"):
    from vitjax.models.layers import resize  # pylint: disable=g-import-not-at-top
    fn = resize.resize_bicubic_torch if method == "bicubic_torch" else resize.resize_bilinear_torch
    grid = fn(grid.astype(jnp.float32), new_grid)
  else:
    grid = jax.image.resize(grid.astype(jnp.float32), (1, *new_grid, d), method=method)
  grid = grid.reshape(1, new_grid[0] * new_grid[1], d).astype(posemb.dtype)
  return jnp.concatenate([prefix, grid], axis=1)


def sine_posemb_2d(h: int, w: int, dim: int, temperature: float = 10_000.0,
                   normalize: bool = True, offset: float = 0.0, scale: float = 2 * np.pi):
  """DETR's sine encoding of an h x w grid (Carion et al. 2020): [h*w, dim].

  Row / column indices 1..h, 1..w (minus `offset`; Deformable DETR uses 0.5),
  divided by (h or w) + 1e-6 and multiplied by `scale` when `normalize`; each
  half of `dim` (y first, then x) interleaves sin / cos at frequencies
  temperature^(-2 floor(i / 2) / (dim / 2)).
  """
  if dim % 4:
    raise ValueError(f"sine 2D position encoding needs dim % 4 == 0, got {dim}")
  n = dim // 2
  y = np.arange(1, h + 1, dtype=np.float64) - offset
  x = np.arange(1, w + 1, dtype=np.float64) - offset
  if normalize:
    y, x = y / (h + 1e-6) * scale, x / (w + 1e-6) * scale
  freq = temperature ** (2 * (np.arange(n) // 2) / n)

  def encode(t):
    a = t[:, None] / freq
    return np.stack([np.sin(a[:, 0::2]), np.cos(a[:, 1::2])], -1).reshape(len(t), n)
  ey, ex = encode(y), encode(x)
  pe = np.concatenate([np.repeat(ey[:, None], w, 1), np.repeat(ex[None], h, 0)], -1)
  return jnp.asarray(pe.reshape(h * w, dim), jnp.float32)
