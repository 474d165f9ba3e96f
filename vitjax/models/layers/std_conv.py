"""Weight-standardized convolution (Qiao et al. 2019), as in BiT and the
ViT paper's hybrid ResNet stems, paired there with GroupNorm."""

from typing import Any, Callable, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp


class StdConv(nn.Module):
  """Conv whose kernel is standardized per output channel before use:
  (w - mean) / sqrt(var + eps) over (kh, kw, in). No bias by default.

  padding: 'SAME' is TensorFlow's (extra pixel after), which is what the
  hybrid ViT checkpoints (and timm's StdConv2dSame) use.
  """
  features: int
  kernel_size: int = 3
  strides: int = 1
  padding: Union[str, Sequence[Tuple[int, int]]] = "SAME"
  use_bias: bool = False
  eps: float = 1e-8
  kernel_init: Callable = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    w = self.param("kernel", self.kernel_init, (k, k, x.shape[-1], self.features))
    mean = jnp.mean(w, axis=(0, 1, 2), keepdims=True)
    var = jnp.mean(jnp.square(w - mean), axis=(0, 1, 2), keepdims=True)
    w = ((w - mean) * jax.lax.rsqrt(var + self.eps)).astype(self.dtype)
    y = jax.lax.conv_general_dilated(
        x.astype(self.dtype), w, (self.strides, self.strides), self.padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,)).astype(self.dtype)
    return y
