"""Image resizing that matches PyTorch's `F.interpolate` exactly.

`jax.image.resize` uses the Keys cubic with a = -0.5 and antialiasing when it
shrinks; PyTorch's `interpolate(mode='bicubic', align_corners=False)` uses
a = -0.75, no antialiasing, and clamps the taps at the border. Models whose
reference resizes inside the forward pass (CrossViT) need the latter to
reproduce its numbers, so it is written here as two small fixed matrices;
bilinear likewise (torch clamps the source position at 0 and does not
antialias when it shrinks; PVT v1 resamples its position embeddings so).
"""

import jax.numpy as jnp
import numpy as np


def _cubic_weights(t: np.ndarray, a: float) -> np.ndarray:
  """Weights of the 4 taps at offsets -1, 0, 1, 2 for fractional positions t."""
  def near(x):  # |x| <= 1
    return ((a + 2) * x - (a + 3)) * x * x + 1
  def far(x):  # 1 < |x| < 2
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
  return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


def bicubic_resize_matrix(n_in: int, n_out: int, a: float = -0.75) -> np.ndarray:
  """[n_out, n_in] matrix of PyTorch's bicubic resize (align_corners=False)."""
  # PyTorch's source positions: a float32 scale, and one (fused) rounding of
  # scale * (i + 0.5) - 0.5 to float32; with these the matrices agree to ~5e-7.
  scale = np.float64(np.float32(np.float32(n_in) / np.float32(n_out)))
  src = (scale * (np.arange(n_out) + 0.5) - 0.5).astype(np.float32).astype(np.float64)
  base = np.floor(src)  # not clamped at 0: the cubic taps reach below 0
  w = _cubic_weights(src - base, a)
  m = np.zeros((n_out, n_in), np.float64)
  for tap in range(4):
    idx = np.clip(base.astype(np.int64) - 1 + tap, 0, n_in - 1)
    np.add.at(m, (np.arange(n_out), idx), w[:, tap])
  return m


def bilinear_resize_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] matrix of PyTorch's bilinear resize (align_corners=False)."""
  scale = np.float64(np.float32(np.float32(n_in) / np.float32(n_out)))
  src = (scale * (np.arange(n_out) + 0.5) - 0.5).astype(np.float32).astype(np.float64)
  src = np.maximum(src, 0.0)
  i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
  i1 = np.minimum(i0 + 1, n_in - 1)
  t = src - i0
  m = np.zeros((n_out, n_in), np.float64)
  np.add.at(m, (np.arange(n_out), i0), 1.0 - t)
  np.add.at(m, (np.arange(n_out), i1), t)
  return m


def _separable_resize(x, size, matrix):
  """NHWC `x` -> `size` = (h, w) by one interpolation matrix per axis."""
  h, w = size
  if x.shape[1:3] == (h, w):
    return x
  mh = jnp.asarray(matrix(x.shape[1], h), x.dtype)
  mw = jnp.asarray(matrix(x.shape[2], w), x.dtype)
  return jnp.einsum("ph,bhwc,qw->bpqc", mh, x, mw)


def resize_bilinear_torch(x, size):
  """Resizes NHWC `x` to `size` = (h, w) as PyTorch's bilinear interpolate."""
  return _separable_resize(x, size, bilinear_resize_matrix)


def resize_bicubic_torch(x, size):
  """Resizes NHWC `x` to `size` = (h, w) as PyTorch's bicubic interpolate."""
  return _separable_resize(x, size, bicubic_resize_matrix)
