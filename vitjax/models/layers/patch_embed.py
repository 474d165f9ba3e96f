"""Patch embedding: a strided convolution that turns an image into tokens."""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from vitjax.errors import UserError


class PatchEmbed(nn.Module):
  """Non-overlapping `patch_size` patches -> `embed_dim` features, NHWC grid."""
  patch_size: int
  embed_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    _, h, w, _ = x.shape
    p = self.patch_size
    if h % p or w % p:
      raise UserError(
          f"Input size {h}x{w} is not divisible by the patch size {p}. Use an "
          f"image size that is a multiple of {p} (e.g. {max(p, h // p * p)} or "
          f"{(h // p + 1) * p}), set via --config.input.image_size.")
    return nn.Conv(self.embed_dim, (p, p), strides=(p, p), padding="VALID",
                   dtype=self.dtype, name="proj")(x)
