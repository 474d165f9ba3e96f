"""ConvNeXt (Liu et al. 2022, "A ConvNet for the 2020s").

image -> "patchify" stem (4x4/4 conv, LayerNorm) -> 4 stages of ConvNeXt
blocks; stages 2-4 start with a downsampling layer (LayerNorm, 2x2/2 conv)
-> global average pool -> LayerNorm -> linear head.

Block (paper Fig. 4): x + DropPath(gamma * Dense(GELU(Dense_4x(LN(dwconv7x7(x)))))),
i.e. a 7x7 depthwise conv, LayerNorm, an inverted-bottleneck MLP (4x wider
inside) with exact GELU, a learned per-channel layer scale gamma (initialised
to 1e-6) and stochastic depth rising linearly over the blocks. No BatchNorm:
the model has only 'params'.

`__call__(images, train=False)` returns `(logits, out)`; `out` holds 'stem',
'stage_0'..'stage_3' (NHWC), 'pre_logits' (pooled and normed) and 'logits'.
"""

from typing import Any, Tuple

import flax.linen as nn
import jax.numpy as jnp

from vitjax.errors import UserError
from vitjax.models.features import FeatureLevel, stage_layer_groups
from vitjax.models.layers import DropPath, Mlp
from vitjax.models.registry import register_model

_init = nn.initializers.truncated_normal(stddev=0.02)


class ConvNeXtBlock(nn.Module):
  """dwconv 7x7 -> LN -> Dense 4d -> GELU -> Dense d -> layer scale, residual."""
  drop_path: float = 0.0
  layer_scale_init: float = 1e-6
  mlp_ratio: int = 4
  kernel_size: int = 7
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    d, k = x.shape[-1], self.kernel_size
    y = nn.Conv(d, (k, k), padding=((k // 2, k // 2), (k // 2, k // 2)), feature_group_count=d,
                kernel_init=_init, dtype=self.dtype, name="dwconv")(x)
    y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="norm")(y)
    y = Mlp(self.mlp_ratio * d, kernel_init=_init, bias_init=nn.initializers.zeros,
            dtype=self.dtype, name="mlp")(y)
    if self.layer_scale_init > 0:
      gamma = self.param("layer_scale", nn.initializers.constant(self.layer_scale_init), (d,))
      y = y * gamma.astype(y.dtype)
    return x + DropPath(self.drop_path)(y, not train)


class ConvNeXt(nn.Module):
  """ConvNeXt classifier over NHWC images.

  depths / widths: blocks and channels per stage (the size table below).
  patch_size: the stem's stride (4 in the paper).
  layer_scale_init: initial gamma; 0 disables layer scale.
  head_norm_eps: epsilon of the LayerNorm after pooling (1e-6 in the paper's
    code; Hugging Face configs use 1e-12). The other LayerNorms use 1e-6.
  num_classes: 0 gives no head (logits are the pooled, normed features).
  """
  num_classes: int = 1000
  depths: Tuple[int, ...] = (3, 3, 9, 3)
  widths: Tuple[int, ...] = (96, 192, 384, 768)
  patch_size: int = 4
  drop_path_rate: float = 0.0
  layer_scale_init: float = 1e-6
  head_norm_eps: float = 1e-6
  dtype: Any = jnp.float32

  def __post_init__(self):
    super().__post_init__()
    if not self.depths or len(self.depths) != len(self.widths):
      raise UserError(f"ConvNeXt depths {tuple(self.depths)} and widths "
                      f"{tuple(self.widths)} must be non-empty and of equal length.")
    if any(d < 1 for d in self.depths) or any(w < 1 for w in self.widths):
      raise UserError(f"ConvNeXt depths {tuple(self.depths)} and widths "
                      f"{tuple(self.widths)} must all be >= 1.")
    if self.patch_size < 1:
      raise UserError(f"ConvNeXt patch_size={self.patch_size} must be >= 1.")

  def feature_levels(self):
    """'stage_i' at stride patch_size * 2^i, widths[i] wide (models/features.py)."""
    return tuple(FeatureLevel(f"stage_{i}", self.patch_size * 2 ** i, c)
                 for i, c in enumerate(self.widths[:len(self.depths)]))

  def layer_groups(self):
    """The stem, then every block; a stage's downsampling joins its first block."""
    return stage_layer_groups(("stem_conv", "stem_norm"), self.depths,
                              first=("stage_{i}_downsample_norm", "stage_{i}_downsample_conv"))

  @nn.compact
  def __call__(self, images, *, train: bool = False):
    out = {}
    p = self.patch_size
    _, h, w, _ = images.shape
    down = p * 2 ** (len(self.depths) - 1)
    if h < down or w < down:
      raise UserError(f"ConvNeXt input {h}x{w} is smaller than its total stride {down} "
                      f"(stem {p}, then {len(self.depths) - 1} 2x downsamplings); set "
                      "--config.input.image_size to at least that.")
    x = nn.Conv(self.widths[0], (p, p), strides=(p, p), padding="VALID", kernel_init=_init,
                dtype=self.dtype, name="stem_conv")(images.astype(self.dtype))
    x = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="stem_norm")(x)
    out["stem"] = x

    total, k = sum(self.depths), 0
    for i, (n, width) in enumerate(zip(self.depths, self.widths)):
      if i > 0:
        x = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name=f"stage_{i}_downsample_norm")(x)
        x = nn.Conv(width, (2, 2), strides=(2, 2), padding="VALID", kernel_init=_init,
                    dtype=self.dtype, name=f"stage_{i}_downsample_conv")(x)
      for j in range(n):
        x = ConvNeXtBlock(drop_path=self.drop_path_rate * k / max(total - 1, 1),
                          layer_scale_init=self.layer_scale_init, dtype=self.dtype,
                          name=f"stage_{i}_block_{j}")(x, train)
        k += 1
      out[f"stage_{i}"] = x

    pooled = nn.LayerNorm(epsilon=self.head_norm_eps, dtype=self.dtype,
                          name="norm")(jnp.mean(x, axis=(1, 2)))
    out["pre_logits"] = pooled
    if not self.num_classes:
      return pooled.astype(jnp.float32), out
    logits = nn.Dense(self.num_classes, kernel_init=_init, dtype=self.dtype, name="head")(pooled)
    out["logits"] = logits
    return logits.astype(jnp.float32), out


# Paper Sec. 2.6 / Table 1 (T, S, B, L, XL): blocks per stage and widths.
CONVNEXT_SIZES = {
    "tiny": dict(depths=(3, 3, 9, 3), widths=(96, 192, 384, 768)),
    "small": dict(depths=(3, 3, 27, 3), widths=(96, 192, 384, 768)),
    "base": dict(depths=(3, 3, 27, 3), widths=(128, 256, 512, 1024)),
    "large": dict(depths=(3, 3, 27, 3), widths=(192, 384, 768, 1536)),
}


def _register(size):
  def factory(**overrides):
    kw = dict(CONVNEXT_SIZES[size])
    kw.update(overrides)
    return ConvNeXt(**kw)
  factory.__doc__ = f"ConvNeXt-{size[0].upper()} at 224x224."
  register_model(factory, name=f"convnext_{size}")


for _size in CONVNEXT_SIZES:
  _register(_size)
