"""Convolution pieces shared by the CNN families (ResNet, EfficientNet, ...).

- `ConvBN`: convolution -> BatchNorm -> optional activation, the unit of
  ResNet and EfficientNet. BatchNorm keeps its running statistics in the
  'batch_stats' collection (the trainer makes it mutable when training);
  `momentum=0.9` is PyTorch's momentum 0.1.
- `same_padding`: PyTorch's symmetric `padding=k // 2` in flax's explicit
  form (flax's "SAME" pads asymmetrically for strided convolutions, which
  would shift every feature map by a pixel relative to the torch models).
- `round_channels`: channel rounding to a multiple of a divisor, as used by
  EfficientNet's compound scaling (and MobileNets).
"""

from typing import Any, Callable, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax.numpy as jnp

Padding = Union[str, Sequence[Tuple[int, int]]]


def same_padding(kernel_size: int, dilation: int = 1):
  """Symmetric padding (k // 2 on every side), as torch's `padding=k // 2`."""
  p = dilation * (kernel_size - 1) // 2
  return ((p, p), (p, p))


def round_channels(channels: float, divisor: int = 8, min_value: Optional[int] = None) -> int:
  """`channels` rounded to the nearest multiple of `divisor` (at least
  `min_value`, default `divisor`), never more than 10% below `channels`."""
  min_value = divisor if min_value is None else min_value
  new = max(min_value, int(channels + divisor / 2) // divisor * divisor)
  if new < 0.9 * channels:
    new += divisor
  return int(new)


class ConvBN(nn.Module):
  """Conv (no bias) -> BatchNorm -> `act` (None: no activation).

  padding: None gives torch-style symmetric `kernel_size // 2`; otherwise
    any flax padding ('VALID', 'SAME' or explicit pairs).
  groups: `feature_group_count`; equal to the input width for a depthwise conv.
  bn_scale_init: zeros for the last BatchNorm of a residual branch makes the
    block start as the identity (Goyal et al. 2017, "zero-init residual").
  """
  features: int
  kernel_size: int = 3
  strides: int = 1
  groups: int = 1
  padding: Optional[Padding] = None
  act: Optional[Callable] = None
  bn_momentum: float = 0.9
  bn_eps: float = 1e-5
  bn_scale_init: Callable = nn.initializers.ones
  kernel_init: Callable = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    k = self.kernel_size
    pad = same_padding(k) if self.padding is None else self.padding
    x = nn.Conv(self.features, (k, k), strides=(self.strides, self.strides), padding=pad,
                feature_group_count=self.groups, use_bias=False, kernel_init=self.kernel_init,
                dtype=self.dtype, name="conv")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                     epsilon=self.bn_eps, scale_init=self.bn_scale_init, dtype=self.dtype,
                     name="bn")(x)
    return x if self.act is None else self.act(x)
