"""ViTDet's simple feature pyramid (Li et al. 2022, "Exploring Plain Vision
Transformer Backbones for Object Detection", Sec. 3 / Fig. 1 (c)): the last
map of a plain ViT (one stride, e.g. 16) -> maps at several strides.

Per scale factor (detectron2's `SimpleFeaturePyramid`, `scale_factors`):
  4.0  ConvTranspose 2x2/2 (C -> C/2), LayerNorm, GELU, ConvTranspose 2x2/2 (-> C/4)
  2.0  ConvTranspose 2x2/2 (C -> C/2)
  1.0  identity
  0.5  max-pool 2x2/2 (floors an odd side, as torch)
then each: 1x1 conv (-> out_channels, no bias) + LayerNorm, 3x3 conv (zero
padding 1, no bias) + LayerNorm. `top_maxpool` adds one more level from the
coarsest output by max-pooling with kernel 1, stride 2 (detectron2's
`LastLevelMaxPool`, "p6"). LayerNorm normalises over channels.

From a stride-16 map the default (2.0, 1.0, 0.5) + top max-pool gives strides
8 / 16 / 32 / 64 (the DETR-family levels); (4.0, 2.0, 1.0, 0.5) gives the
paper's 4 / 8 / 16 / 32 (+ 64). `PyramidBackbone` wraps a single-stride
backbone with it and declares the new maps as its feature levels
(vitjax/models/features.py).
"""

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vitjax.errors import UserError
from vitjax.models.features import FeatureLevel, feature_levels, layer_groups

SCALES = (4.0, 2.0, 1.0, 0.5)


def check_scale_factors(scale_factors):
  bad = [s for s in scale_factors if float(s) not in SCALES]
  if bad or not scale_factors:
    raise UserError(f"simple_pyramid scale_factors={tuple(scale_factors)}: each must be one of "
                    f"{SCALES} (deconvolution x4 / x2, identity, max-pool), e.g. (2.0, 1.0, 0.5).")


class SimpleFeaturePyramid(nn.Module):
  """One NHWC map -> a list of maps, one per scale factor (+ the top max-pool)."""
  out_channels: int = 256
  scale_factors: Sequence[float] = (2.0, 1.0, 0.5)
  top_maxpool: bool = True
  layer_norm_eps: float = 1e-6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    check_scale_factors(self.scale_factors)
    c = x.shape[-1]
    norm = lambda name: nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype,  # noqa: E731
                                     name=name)
    up = lambda ch, name: nn.ConvTranspose(ch, (2, 2), strides=(2, 2), padding="VALID",  # noqa: E731
                                           dtype=self.dtype, name=name)
    outs = []
    for i, scale in enumerate(float(s) for s in self.scale_factors):
      y = x
      if scale == 4.0:
        y = up(c // 2, f"level_{i}_up_0")(y)
        y = jax.nn.gelu(norm(f"level_{i}_up_norm")(y), approximate=False)
        y = up(c // 4, f"level_{i}_up_1")(y)
      elif scale == 2.0:
        y = up(c // 2, f"level_{i}_up_0")(y)
      elif scale == 0.5:
        y = nn.max_pool(y, (2, 2), strides=(2, 2), padding="VALID")
      y = nn.Conv(self.out_channels, (1, 1), use_bias=False, dtype=self.dtype,
                  name=f"level_{i}_lateral")(y)
      y = norm(f"level_{i}_lateral_norm")(y)
      y = nn.Conv(self.out_channels, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                  dtype=self.dtype, name=f"level_{i}_output")(y)
      outs.append(norm(f"level_{i}_output_norm")(y))
    if self.top_maxpool:
      outs.append(nn.max_pool(outs[-1], (1, 1), strides=(2, 2), padding="VALID"))
    return outs


def pyramid_strides(stride: int, scale_factors, top_maxpool: bool):
  """The output strides of the pyramid on a `stride` map, fine to coarse order kept."""
  strides = [int(round(stride / float(s))) for s in scale_factors]
  if top_maxpool:
    strides.append(2 * strides[-1])
  return strides


class PyramidBackbone(nn.Module):
  """A single-stride backbone + the simple feature pyramid on its map.

  Declares levels 'pyramid_<stride>' (out_channels wide); `out` also keeps
  every key of the inner backbone's `out`. Parameters: 'body' (the
  backbone) and 'pyramid'.
  """
  body: nn.Module
  out_channels: int = 256
  scale_factors: Sequence[float] = (2.0, 1.0, 0.5)
  top_maxpool: bool = True
  dtype: Any = jnp.float32

  def _source(self):
    levels = feature_levels(self.body)
    if len({lv.stride for lv in levels}) != 1:
      raise UserError(f"simple_pyramid needs a single-stride backbone (a plain ViT); "
                      f"{type(self.body).__name__} has strides "
                      f"{sorted({lv.stride for lv in levels})}: use its own levels instead.")
    return levels[-1]

  def feature_levels(self):
    """'pyramid_<stride>' at each pyramid stride (models/features.py)."""
    check_scale_factors(self.scale_factors)
    src = self._source()
    strides = pyramid_strides(src.stride, self.scale_factors, self.top_maxpool)
    if any(s < 1 or math.log2(s) % 1 for s in strides):
      raise UserError(f"simple_pyramid on a stride-{src.stride} map gives strides {strides}; "
                      "use scale factors that keep them whole powers of 2.")
    order = sorted(range(len(strides)), key=lambda i: strides[i])
    return tuple(FeatureLevel(f"pyramid_{strides[i]}", strides[i], self.out_channels)
                 for i in order)

  def layer_groups(self):
    """The backbone's block order (under 'body'); the pyramid is a top layer."""
    return tuple(tuple(f"body/{n}" for n in g) for g in layer_groups(self.body))

  @nn.compact
  def __call__(self, images, *, train: bool = False):
    src = self._source()
    logits, out = self.body(images, train=train)
    out = dict(out)
    maps = SimpleFeaturePyramid(self.out_channels, tuple(self.scale_factors),
                                self.top_maxpool, dtype=self.dtype,
                                name="pyramid")(out[src.name])
    strides = pyramid_strides(src.stride, self.scale_factors, self.top_maxpool)
    for s, m in zip(strides, maps):
      out[f"pyramid_{s}"] = m
    return logits, out
