"""ResNet (He et al. 2016, "Deep Residual Learning for Image Recognition").

image -> stem (7x7/2 conv, BN, ReLU, 3x3/2 max-pool) -> 4 stages of residual
blocks (the first block of stages 2-4 halves the resolution) -> global
average pool -> linear head.

Blocks (paper Table 1): BasicBlock (3x3, 3x3) for ResNet-18/34, Bottleneck
(1x1 reduce, 3x3, 1x1 expand x4) for ResNet-50/101/152. The downsampling
stride sits on the bottleneck's 3x3 conv ("ResNet v1.5", as in torchvision
and Hugging Face), not on the first 1x1 as in the paper. Shortcuts are the
identity, or a 1x1 conv + BN (option B) where the shape changes.

`small_stem=True` replaces the stem by a 3x3/1 conv without max-pool, for
small images (CIFAR, the 8x8 digits), as in the paper's CIFAR experiments.

`__call__(images, train=False)` returns `(logits, out)`; `out` holds 'stem',
'stage_0'..'stage_3' (NHWC feature maps), 'pre_logits' (pooled) and
'logits'. BatchNorm statistics live in the 'batch_stats' collection.
"""

from typing import Any, Optional, Tuple

import flax.linen as nn
import jax.numpy as jnp

from vitjax.errors import UserError
from vitjax.models.features import FeatureLevel, stage_layer_groups
from vitjax.models.layers import ConvBN, DropPath
from vitjax.models.registry import register_model

# Paper Table 1: block type and number of blocks per stage for each depth.
RESNET_DEPTHS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
EXPANSION = {"basic": 1, "bottleneck": 4}


class BasicBlock(nn.Module):
  """relu(x + BN(conv3x3(relu(BN(conv3x3/s(x))))))."""
  features: int
  strides: int = 1
  drop_path: float = 0.0
  zero_init_residual: bool = False
  bn_momentum: float = 0.9
  bn_eps: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    bn = dict(bn_momentum=self.bn_momentum, bn_eps=self.bn_eps, dtype=self.dtype)
    last_init = nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones
    y = ConvBN(self.features, 3, self.strides, act=nn.relu, name="conv1", **bn)(x, train)
    y = ConvBN(self.features, 3, bn_scale_init=last_init, name="conv2", **bn)(y, train)
    shortcut = x
    if self.strides != 1 or x.shape[-1] != self.features:
      shortcut = ConvBN(self.features, 1, self.strides, name="downsample", **bn)(x, train)
    return nn.relu(shortcut + DropPath(self.drop_path)(y, not train))


class Bottleneck(nn.Module):
  """relu(x + BN(conv1x1(relu(BN(conv3x3/s(relu(BN(conv1x1(x))))))))).

  `features` is the output width; the inner width is features // 4.
  """
  features: int
  strides: int = 1
  drop_path: float = 0.0
  zero_init_residual: bool = False
  bn_momentum: float = 0.9
  bn_eps: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    bn = dict(bn_momentum=self.bn_momentum, bn_eps=self.bn_eps, dtype=self.dtype)
    last_init = nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones
    inner = self.features // EXPANSION["bottleneck"]
    y = ConvBN(inner, 1, act=nn.relu, name="conv1", **bn)(x, train)
    y = ConvBN(inner, 3, self.strides, act=nn.relu, name="conv2", **bn)(y, train)
    y = ConvBN(self.features, 1, bn_scale_init=last_init, name="conv3", **bn)(y, train)
    shortcut = x
    if self.strides != 1 or x.shape[-1] != self.features:
      shortcut = ConvBN(self.features, 1, self.strides, name="downsample", **bn)(x, train)
    return nn.relu(shortcut + DropPath(self.drop_path)(y, not train))


class ResNet(nn.Module):
  """ResNet classifier over NHWC images.

  depth: 18, 34, 50, 101 or 152 (paper Table 1); ignored when `stage_depths`
    is given.
  width: the stem width and the 3x3 width of the first stage (64 in the
    paper); stage i is width * 2**i wide (x4 at the output of a bottleneck).
  stage_depths / block / stage_widths / stem_width: explicit architecture
    (e.g. to import a Hugging Face ResNetConfig); stage_widths are the
    output widths of the stages.
  small_stem: 3x3/1 stem conv and no max-pool, for small images.
  zero_init_residual: the last BN of every residual branch starts at zero.
  drop_path_rate: stochastic depth, rising linearly to this rate over blocks.
  num_classes: 0 gives no head (logits are the pooled features).
  """
  num_classes: int = 1000
  depth: int = 50
  width: int = 64
  block: str = ""
  stage_depths: Optional[Tuple[int, ...]] = None
  stage_widths: Optional[Tuple[int, ...]] = None
  stem_width: int = 0
  small_stem: bool = False
  zero_init_residual: bool = False
  drop_path_rate: float = 0.0
  bn_momentum: float = 0.9
  bn_eps: float = 1e-5
  dtype: Any = jnp.float32

  def __post_init__(self):
    super().__post_init__()
    self.architecture()  # errors at construction, not at the first call

  def architecture(self):
    """(block, stage depths, stage output widths, stem width), checked."""
    if self.stage_depths is None:
      if self.depth not in RESNET_DEPTHS:
        raise UserError(f"ResNet depth {self.depth} is not one of "
                        f"{sorted(RESNET_DEPTHS)} (paper Table 1); give stage_depths "
                        "(and block) for another layout.")
      block, depths = RESNET_DEPTHS[self.depth]
    else:
      block, depths = self.block or "basic", tuple(self.stage_depths)
    block = self.block or block
    if block not in EXPANSION:
      raise UserError(f"ResNet block {block!r}: use 'basic' or 'bottleneck'.")
    if not depths or any(int(d) < 1 for d in depths):
      raise UserError(f"ResNet stage_depths {depths}: every stage needs >= 1 block.")
    if self.width < 1:
      raise UserError(f"ResNet width={self.width} must be >= 1.")
    if self.stage_widths is None:
      widths = tuple(self.width * 2 ** i * EXPANSION[block] for i in range(len(depths)))
    else:
      widths = tuple(self.stage_widths)
    if len(widths) != len(depths):
      raise UserError(f"ResNet has {len(depths)} stages but {len(widths)} stage_widths.")
    if block == "bottleneck" and any(w < 4 or w % 4 for w in widths):
      raise UserError(f"ResNet bottleneck stage widths {widths} must be multiples of 4 "
                      "(the inner width is a quarter of the output width).")
    return block, depths, widths, self.stem_width or self.width

  def feature_levels(self):
    """'stage_i' at stride 4 * 2^i (2^i with small_stem); see models/features.py."""
    _, depths, widths, _ = self.architecture()
    base = 1 if self.small_stem else 4
    return tuple(FeatureLevel(f"stage_{i}", base * 2 ** i, c) for i, c in enumerate(widths))

  def layer_groups(self):
    """The stem, then every block in forward order (models/features.py)."""
    return stage_layer_groups(("stem",), self.architecture()[1])

  @nn.compact
  def __call__(self, images, *, train: bool = False):
    block, depths, widths, stem_width = self.architecture()
    bn = dict(bn_momentum=self.bn_momentum, bn_eps=self.bn_eps, dtype=self.dtype)
    out = {}
    x = images.astype(self.dtype)
    if self.small_stem:
      x = ConvBN(stem_width, 3, act=nn.relu, name="stem", **bn)(x, train)
    else:
      x = ConvBN(stem_width, 7, 2, act=nn.relu, name="stem", **bn)(x, train)
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    out["stem"] = x

    block_cls = Bottleneck if block == "bottleneck" else BasicBlock
    total, k = sum(depths), 0
    for i, (n, features) in enumerate(zip(depths, widths)):
      for j in range(n):
        x = block_cls(features, strides=2 if (i > 0 and j == 0) else 1,
                      drop_path=self.drop_path_rate * k / max(total - 1, 1),
                      zero_init_residual=self.zero_init_residual,
                      name=f"stage_{i}_block_{j}", **bn)(x, train)
        k += 1
      out[f"stage_{i}"] = x

    pooled = jnp.mean(x, axis=(1, 2))
    out["pre_logits"] = pooled
    if not self.num_classes:
      return pooled.astype(jnp.float32), out
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(pooled)
    out["logits"] = logits
    return logits.astype(jnp.float32), out


def _register(depth):
  def factory(**overrides):
    kw = dict(depth=depth)
    kw.update(overrides)
    return ResNet(**kw)
  block = RESNET_DEPTHS[depth][0]
  factory.__doc__ = f"ResNet-{depth} ({block} blocks, v1.5 strides), 224x224 ImageNet layout."
  register_model(factory, name=f"resnet{depth}")


for _depth in RESNET_DEPTHS:
  _register(_depth)
