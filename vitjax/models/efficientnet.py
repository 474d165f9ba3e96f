"""EfficientNet (Tan & Le 2019, "EfficientNet: Rethinking Model Scaling for
Convolutional Neural Networks").

image -> stem (3x3/2 conv, BN, swish) -> 7 stages of MBConv blocks ->
1x1 conv to 1280 (scaled), BN, swish -> global average pool -> dropout ->
linear head.

MBConv (MobileNetV2's inverted residual + squeeze-excitation): 1x1 expand
(x expand ratio; skipped when it is 1), BN, swish -> kxk depthwise conv
(stride s), BN, swish -> squeeze-excitation (global pool, 1x1 reduce to a
quarter of the block's *input* width, swish, 1x1 expand, sigmoid gate) ->
1x1 project, BN (no activation) -> + input, through stochastic depth ("drop
connect"), for every block of a stage but the first.

Compound scaling (paper Sec. 3.3): B1-B3 multiply every width by
`width_mult` (rounded to a multiple of 8 by `round_filters`, never more than
10% down) and every stage's block count by `depth_mult` (rounded up,
`round_repeats`); the paper's resolutions are 224/240/260/300.

Padding follows the TensorFlow reference (as Hugging Face does): stride-2
convolutions pad (k//2 - 1, k//2) top/left vs bottom/right, i.e. TF "SAME" on
even inputs; stride-1 ones pad k//2 on every side.

`__call__(images, train=False)` returns `(logits, out)`; `out` holds 'stem',
'stage_0'..'stage_6' (NHWC), 'feature_map' (after the 1x1 head conv),
'pre_logits' (pooled) and 'logits'. BatchNorm statistics live in
'batch_stats'; epsilon 1e-3 as in the reference.
"""

import math
from typing import Any, Tuple

import flax.linen as nn
import jax.numpy as jnp

from vitjax.errors import UserError
from vitjax.models.features import FeatureLevel, stage_layer_groups
from vitjax.models.layers import ConvBN, DropPath, round_channels
from vitjax.models.registry import register_model

# Paper Table 1 (EfficientNet-B0): per stage (expand ratio, kernel, stride,
# input width, output width, blocks).
B0_BLOCKS = (
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
)


def _stride_padding(k: int, stride: int, symmetric: bool = False):
  if stride == 1 or symmetric:
    return ((k // 2, k // 2), (k // 2, k // 2))
  return ((k // 2 - 1, k // 2), (k // 2 - 1, k // 2))


class SqueezeExcite(nn.Module):
  """x * sigmoid(W2 swish(W1 mean_hw(x))) (Hu et al. 2018)."""
  reduced: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    s = jnp.mean(x, axis=(1, 2), keepdims=True)
    s = nn.swish(nn.Conv(self.reduced, (1, 1), dtype=self.dtype, name="reduce")(s))
    s = nn.sigmoid(nn.Conv(x.shape[-1], (1, 1), dtype=self.dtype, name="expand")(s))
    return x * s


class MBConv(nn.Module):
  """Inverted residual with squeeze-excitation (see the module docstring)."""
  features: int
  expand_ratio: int = 6
  kernel_size: int = 3
  strides: int = 1
  se_features: int = 0
  residual: bool = True
  symmetric_padding: bool = False
  drop_path: float = 0.0
  bn_momentum: float = 0.9
  bn_eps: float = 1e-3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    bn = dict(bn_momentum=self.bn_momentum, bn_eps=self.bn_eps, dtype=self.dtype)
    d = x.shape[-1]
    y = x
    if self.expand_ratio != 1:
      y = ConvBN(d * self.expand_ratio, 1, act=nn.swish, name="expand", **bn)(y, train)
    k = self.kernel_size
    y = ConvBN(y.shape[-1], k, self.strides, groups=y.shape[-1], act=nn.swish,
               padding=_stride_padding(k, self.strides, self.symmetric_padding),
               name="dwconv", **bn)(y, train)
    if self.se_features:
      y = SqueezeExcite(self.se_features, dtype=self.dtype, name="se")(y)
    y = ConvBN(self.features, 1, name="project", **bn)(y, train)
    if self.residual:
      y = x + DropPath(self.drop_path)(y, not train)
    return y


class EfficientNet(nn.Module):
  """EfficientNet classifier over NHWC images.

  width_mult / depth_mult: the compound-scaling coefficients (size table).
  blocks: the B0 stage table (expand, kernel, stride, in, out, repeats),
    before scaling.
  stem_features / head_features: B0's 32 and 1280, before scaling.
  dropout: before the head (0.2 for B0/B1, 0.3 for B2/B3).
  drop_path_rate: stochastic depth of block k is rate * k / (number of blocks).
  depthwise_padding: indices of blocks whose stride-2 depthwise conv pads
    symmetrically (a Hugging Face config option; empty for B0-B3).
  num_classes: 0 gives no head (logits are the pooled features).
  """
  num_classes: int = 1000
  width_mult: float = 1.0
  depth_mult: float = 1.0
  dropout: float = 0.2
  drop_path_rate: float = 0.2
  blocks: Tuple[Tuple[int, ...], ...] = B0_BLOCKS
  stem_features: int = 32
  head_features: int = 1280
  divisor: int = 8
  se_ratio: float = 0.25
  depthwise_padding: Tuple[int, ...] = ()
  bn_momentum: float = 0.9
  bn_eps: float = 1e-3
  dtype: Any = jnp.float32

  def __post_init__(self):
    super().__post_init__()
    if not (self.width_mult > 0 and self.depth_mult > 0):
      raise UserError(f"EfficientNet width_mult={self.width_mult} and depth_mult="
                      f"{self.depth_mult} must be > 0 (a zero multiplier leaves no "
                      "channels / blocks).")
    if self.divisor < 1:
      raise UserError(f"EfficientNet divisor={self.divisor} must be >= 1.")
    for row in self.blocks:
      if len(row) != 6 or min(row) < 1 or row[2] not in (1, 2) or row[1] % 2 == 0:
        raise UserError(f"EfficientNet block row {row}: expected (expand>=1, odd kernel, "
                        "stride 1|2, in, out, repeats>=1).")
    if not self.blocks:
      raise UserError("EfficientNet needs at least one stage in `blocks`.")

  def round_filters(self, channels: int) -> int:
    """Width scaling: channels * width_mult to a multiple of `divisor`."""
    return round_channels(channels * self.width_mult, self.divisor)

  def round_repeats(self, repeats: int) -> int:
    """Depth scaling: repeats * depth_mult, rounded up."""
    return int(math.ceil(self.depth_mult * repeats))

  def feature_levels(self):
    """'stage_i' after each row of `blocks` (B0: strides 2, 4, 8, 16, 16, 32,
    32; two pairs share a stride), round_filters(out) wide (models/features.py)."""
    levels, stride = [], 2
    for i, row in enumerate(self.blocks):
      stride *= row[2]
      levels.append(FeatureLevel(f"stage_{i}", stride, self.round_filters(row[4])))
    return tuple(levels)

  def layer_groups(self):
    """The stem, then every MBConv block (models/features.py)."""
    return stage_layer_groups(("stem",), [self.round_repeats(r[5]) for r in self.blocks])

  @nn.compact
  def __call__(self, images, *, train: bool = False):
    bn = dict(bn_momentum=self.bn_momentum, bn_eps=self.bn_eps, dtype=self.dtype)
    out = {}
    x = ConvBN(self.round_filters(self.stem_features), 3, 2, act=nn.swish,
               padding=_stride_padding(3, 2), name="stem", **bn)(
                   images.astype(self.dtype), train)
    out["stem"] = x

    total = sum(self.round_repeats(r[5]) for r in self.blocks)
    k = 0
    for i, (expand, kernel, stride, c_in, c_out, repeats) in enumerate(self.blocks):
      for j in range(self.round_repeats(repeats)):
        in_features = self.round_filters(c_in if j == 0 else c_out)
        x = MBConv(self.round_filters(c_out), expand_ratio=expand, kernel_size=kernel,
                   strides=stride if j == 0 else 1,
                   se_features=max(1, int(in_features * self.se_ratio)) if self.se_ratio else 0,
                   residual=j > 0, symmetric_padding=k in self.depthwise_padding,
                   drop_path=self.drop_path_rate * k / total,
                   name=f"stage_{i}_block_{j}", **bn)(x, train)
        k += 1
      out[f"stage_{i}"] = x

    x = ConvBN(self.round_filters(self.head_features), 1, act=nn.swish, name="head_conv",
               **bn)(x, train)
    out["feature_map"] = x
    pooled = jnp.mean(x, axis=(1, 2))
    out["pre_logits"] = pooled
    if not self.num_classes:
      return pooled.astype(jnp.float32), out
    pooled = nn.Dropout(self.dropout)(pooled, deterministic=not train)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(pooled)
    out["logits"] = logits
    return logits.astype(jnp.float32), out


# Paper Sec. 3.3 / the reference implementation: (width, depth, resolution,
# dropout) for each size.
EFFICIENTNET_SIZES = {
    "b0": (1.0, 1.0, 224, 0.2),
    "b1": (1.0, 1.1, 240, 0.2),
    "b2": (1.1, 1.2, 260, 0.3),
    "b3": (1.2, 1.4, 300, 0.3),
    "b4": (1.4, 1.8, 380, 0.4),
}


def _register(size):
  width, depth, res, dropout = EFFICIENTNET_SIZES[size]
  def factory(**overrides):
    kw = dict(width_mult=width, depth_mult=depth, dropout=dropout)
    kw.update(overrides)
    return EfficientNet(**kw)
  factory.__doc__ = (f"EfficientNet-{size.upper()}: width x{width}, depth x{depth}, "
                     f"{res}x{res} input.")
  register_model(factory, name=f"efficientnet_{size}")


for _size in EFFICIENTNET_SIZES:
  _register(_size)
