"""Patch embedding: a strided convolution that turns an image into tokens."""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from vitjax.errors import UserError


class PatchEmbed(nn.Module):
  """Non-overlapping `patch_size` patches -> `embed_dim` features, NHWC grid.

  remainder: what a side the patch size does not divide gets: 'error' (a
  UserError), 'pad' (zeros at the bottom / right up to the next multiple,
  HF Swin's `maybe_pad`) or 'floor' (the strided conv drops the last rows /
  columns, as torch's Conv2d in HF ViT).
  """
  patch_size: int
  embed_dim: int
  dtype: Any = jnp.float32
  remainder: str = "error"

  @nn.compact
  def __call__(self, x):
    _, h, w, _ = x.shape
    p = self.patch_size
    if self.remainder not in ("error", "pad", "floor"):
      raise ValueError(f"remainder must be 'error', 'pad' or 'floor', got {self.remainder!r}")
    if self.remainder == "pad" and (h % p or w % p):
      x = jnp.pad(x, ((0, 0), (0, -h % p), (0, -w % p), (0, 0)))
    elif self.remainder == "floor" and h >= p and w >= p:
      x = x[:, :h // p * p, :w // p * p]
    elif h % p or w % p:
      raise UserError(
          f"Input size {h}x{w} is not divisible by the patch size {p}. Use an "
          f"image size that is a multiple of {p} (e.g. {max(p, h // p * p)} or "
          f"{(h // p + 1) * p}), set via --config.input.image_size.")
    return nn.Conv(self.embed_dim, (p, p), strides=(p, p), padding="VALID",
                   dtype=self.dtype, name="proj")(x)


def apply_mask_token(module: nn.Module, x, mask):
  """Masked-image modelling input (SimMIM): tokens where `mask` is True become
  the learned parameter `module.mask_token` ([1, 1, D], normal(0.02) init).

  x: [B, N, D] or [B, h, w, D]; mask: bool of x's shape without D.
  """
  d = x.shape[-1]
  if mask.shape != x.shape[:-1]:
    raise ValueError(f"mask must be {x.shape[:-1]} (one bool per patch), got {mask.shape}")
  token = module.param("mask_token", nn.initializers.normal(stddev=0.02), (1, 1, d))
  token = token.reshape((1,) * (x.ndim - 1) + (d,)).astype(x.dtype)
  return jnp.where(mask[..., None], token, x)
