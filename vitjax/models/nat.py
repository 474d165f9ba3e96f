"""Neighborhood Attention Transformer (Hassani et al. 2022, "Neighborhood
Attention Transformer") and Dilated Neighborhood Attention Transformer
(Hassani & Shi 2022, "Dilated Neighborhood Attention Transformer").

image -> overlapping conv tokenizer (two 3x3 stride-2 convs, zero padding 1,
-> /4, then LayerNorm; NAT Sec. 3.2) -> 4 levels of `depths[i]` pre-norm NA
blocks; between levels a conv downsampler (3x3 stride 2 without bias, width
x2, then LayerNorm) -> LayerNorm -> global average pool -> linear head
(NAT Fig. 4).

Block:  x + DropPath(g1 * NA(LN(x))),  x + DropPath(g2 * MLP(LN(x))), with
layer scale g1, g2 (init `layer_scale`, per channel) only in the models
that have it (NAT-S / NAT-B: 1e-5); NA is neighborhood attention with
kernel 7 and a relative position bias (layers/neighborhood_attention.py).

DiNAT (DiNAT Sec. 3.3) is the same network with every other block dilated:
per level, blocks alternate dilation 1 (local NA) and a dilation chosen so
the dilated window spans the level's map at 224x224 (56, 28, 14, 7 maps /
kernel 7 -> 8, 4, 2, 1), as in the released configs: [[1, 8, 1],
[1, 4, 1, 4], [1, 2] * 3 (or * 9), [1] * 5].

Input sizes: any. Each conv halves a side rounding up, so level i works on a
ceil(S / 2^(i+2)) map; natten needs kernel * dilation <= the map side, so a
block whose map is smaller zero-pads its (normed) map at the bottom / right
to kernel * dilation before the attention and crops back after it, as HF's
DiNAT (`maybe_pad`).

`__call__(images, train=False)` returns `(logits, out)`; `out` holds 'stem'
(the tokenizer's map), 'stage_{i}' (NHWC map after level i's blocks, before
its downsampler), 'encoded' (the last map after the final LayerNorm),
'feature_map' (the same) and 'pre_logits' (the pooled features).

Weights: vitjax.convert.nat imports HF `DinatForImageClassification`
checkpoints (NAT = DiNAT with all dilations 1).
"""

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from vitjax.errors import UserError
from vitjax.models.features import FeatureLevel, stage_layer_groups
from vitjax.models.layers import DropPath, Mlp
from vitjax.models.layers.checks import check_stage_fields
from vitjax.models.layers.neighborhood_attention import (NeighborhoodAttention,
                                                         check_neighborhood)
from vitjax.models.registry import register_model

_init = nn.initializers.truncated_normal(stddev=0.02)


def _halve(n: int) -> int:
  """Output side of a 3x3 stride-2 conv with padding 1."""
  return (n + 1) // 2


def level_sizes(size: int, num_levels: int):
  """Map side of each level for an input side `size` (tokenizer /4, then /2)."""
  s = _halve(_halve(size))
  out = []
  for _ in range(num_levels):
    out.append(s)
    s = _halve(s)
  return out


class NATBlock(nn.Module):
  """Pre-norm (dilated) neighborhood attention + MLP, optional layer scale."""
  num_heads: int
  kernel_size: int = 7
  dilation: int = 1
  mlp_ratio: float = 4.0
  layer_scale: float = 0.0
  qkv_bias: bool = True
  dropout: float = 0.0
  attention_dropout: float = 0.0
  drop_path: float = 0.0
  layer_norm_eps: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    _, h, w, c = x.shape
    y = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name="norm1")(x)
    window = self.kernel_size * self.dilation  # HF DiNAT's maybe_pad
    pad_h, pad_w = max(0, window - h), max(0, window - w)
    if pad_h or pad_w:
      y = jnp.pad(y, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
    y = NeighborhoodAttention(self.num_heads, self.kernel_size, self.dilation,
                              qkv_bias=self.qkv_bias,
                              attention_dropout=self.attention_dropout,
                              dropout=self.dropout, dtype=self.dtype, name="attn")(
                                  y, deterministic)[:, :h, :w]
    if self.layer_scale:
      y = y * self.param("gamma1", nn.initializers.constant(self.layer_scale), (c,))
    x = x + DropPath(self.drop_path)(y, deterministic)
    y = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name="norm2")(x)
    y = Mlp(int(c * self.mlp_ratio), dropout=self.dropout, dtype=self.dtype,
            kernel_init=_init, bias_init=nn.initializers.zeros, name="mlp")(y, deterministic)
    if self.layer_scale:
      y = y * self.param("gamma2", nn.initializers.constant(self.layer_scale), (c,))
    return x + DropPath(self.drop_path)(y, deterministic)


class NAT(nn.Module):
  """NAT / DiNAT classifier over NHWC images.

  embed_dim: width of level 0 (doubles at each level); depths / num_heads:
  blocks and heads per level; kernel_size: the NA window (odd);
  dilations: per level, one dilation per block (None: all 1, i.e. NAT);
  layer_scale: initial layer-scale value (0: none); drop_path_rate:
  stochastic depth rising linearly over all blocks from 0 to this value;
  num_classes: 0 gives no head (logits = pooled features).
  """
  num_classes: int = 1000
  embed_dim: int = 64
  depths: Sequence[int] = (3, 4, 6, 5)
  num_heads: Sequence[int] = (2, 4, 8, 16)
  kernel_size: int = 7
  dilations: Optional[Sequence[Sequence[int]]] = None
  mlp_ratio: float = 3.0
  layer_scale: float = 0.0
  qkv_bias: bool = True
  dropout: float = 0.0
  attention_dropout: float = 0.0
  drop_path_rate: float = 0.2
  layer_norm_eps: float = 1e-5
  dtype: Any = jnp.float32

  @property
  def embed_dims(self):
    return tuple(self.embed_dim * 2 ** i for i in range(len(self.depths)))

  def level_dilations(self):
    if self.dilations is None:
      return tuple((1,) * d for d in self.depths)
    return tuple(tuple(int(x) for x in level) for level in self.dilations)

  def _checks(self, h, w):
    """Raises UserError for a bad config or an input too small for it."""
    check_stage_fields("NAT", self, ("num_heads",))
    dil = self.level_dilations()
    if len(dil) != len(self.depths) or any(
        len(level) != d for level, d in zip(dil, self.depths)):
      raise UserError(f"NAT: dilations={dil} must have one entry per block of each "
                      f"level (depths={tuple(self.depths)}).")
    for i, level in enumerate(dil):
      for j, d in enumerate(level):
        check_neighborhood(10 ** 9, 10 ** 9, self.kernel_size, d,
                           where=f"level {i} block {j}")
    del h, w  # any size: small maps are padded per block (module docstring)

  def feature_levels(self):
    """'stage_i' (after level i) at stride 4 * 2^i, embed_dim * 2^i wide
    (models/features.py)."""
    return tuple(FeatureLevel(f"stage_{i}", 4 * 2 ** i, self.embed_dim * 2 ** i)
                 for i in range(len(self.depths)))

  def layer_groups(self):
    """The tokenizer, then every block; a level's downsampling joins its first."""
    return stage_layer_groups(("tokenizer_conv0", "tokenizer_conv1", "tokenizer_norm"),
                              self.depths, block="level_{i}_block_{j}",
                              first=("level_{i}_downsample", "level_{i}_downsample_norm"))

  @nn.compact
  def __call__(self, images, *, train: bool = False):
    _, h, w, _ = images.shape
    self._checks(h, w)
    deterministic = not train
    out = {}
    c0 = self.embed_dim
    x = images.astype(self.dtype)
    for i, width in enumerate((c0 // 2, c0)):
      x = nn.Conv(width, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), dtype=self.dtype,
                  name=f"tokenizer_conv{i}")(x)
    x = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name="tokenizer_norm")(x)
    x = nn.Dropout(self.dropout)(x, deterministic=deterministic)
    out["stem"] = x

    total = sum(self.depths)
    dpr = np.linspace(0.0, self.drop_path_rate, total) if total > 1 else [0.0] * total
    k = 0
    for i, (depth, heads, dil) in enumerate(zip(self.depths, self.num_heads,
                                                self.level_dilations())):
      if i > 0:
        x = nn.Conv(2 * x.shape[-1], (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)),
                    use_bias=False, dtype=self.dtype, name=f"level_{i}_downsample")(x)
        x = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype,
                         name=f"level_{i}_downsample_norm")(x)
      for j in range(depth):
        x = NATBlock(heads, self.kernel_size, dil[j], mlp_ratio=self.mlp_ratio,
                     layer_scale=self.layer_scale, qkv_bias=self.qkv_bias,
                     dropout=self.dropout, attention_dropout=self.attention_dropout,
                     drop_path=float(dpr[k]), layer_norm_eps=self.layer_norm_eps,
                     dtype=self.dtype, name=f"level_{i}_block_{j}")(x, deterministic)
        k += 1
      out[f"stage_{i}"] = x

    x = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name="norm")(x)
    out["encoded"] = out["feature_map"] = x
    pooled = jnp.mean(x, axis=(1, 2))
    out["pre_logits"] = pooled
    if not self.num_classes:
      return pooled.astype(jnp.float32), out
    logits = nn.Dense(self.num_classes, kernel_init=_init, dtype=self.dtype, name="head")(pooled)
    out["logits"] = logits
    return logits.astype(jnp.float32), out


# NAT Table 1 / released configs (kernel 7, 224x224, ImageNet-1k):
# NAT-Mini 20M, Tiny 28M, Small 51M, Base 90M parameters; DiNAT (DiNAT Table 2)
# has the same shapes and counts. Layer scale 1e-5 only in NAT-S / NAT-B.
NAT_SIZES = {
    "mini": dict(embed_dim=64, depths=(3, 4, 6, 5), num_heads=(2, 4, 8, 16), mlp_ratio=3.0,
                 drop_path_rate=0.2),
    "tiny": dict(embed_dim=64, depths=(3, 4, 18, 5), num_heads=(2, 4, 8, 16), mlp_ratio=3.0,
                 drop_path_rate=0.2),
    "small": dict(embed_dim=96, depths=(3, 4, 18, 5), num_heads=(3, 6, 12, 24),
                  mlp_ratio=2.0, drop_path_rate=0.3),
    "base": dict(embed_dim=128, depths=(3, 4, 18, 5), num_heads=(4, 8, 16, 32),
                 mlp_ratio=2.0, drop_path_rate=0.5),
}
NAT_LAYER_SCALE = {"mini": 0.0, "tiny": 0.0, "small": 1e-5, "base": 1e-5}


def dinat_dilations(depths, image_size: int = 224, kernel_size: int = 7):
  """DiNAT's per-block dilations: odd blocks local (1), even blocks dilated by
  max(1, level map side // kernel_size) (224, k7 -> 8, 4, 2, 1)."""
  sizes = level_sizes(image_size, len(depths))
  return tuple(tuple(1 if j % 2 == 0 else max(1, s // kernel_size) for j in range(d))
               for s, d in zip(sizes, depths))


def _register(size, dilated):
  def factory(**overrides):
    kw = dict(NAT_SIZES[size], kernel_size=7)
    if dilated:
      kw["dilations"] = dinat_dilations(kw["depths"])
    else:
      kw["layer_scale"] = NAT_LAYER_SCALE[size]
    kw.update(overrides)
    return NAT(**kw)
  family = "DiNAT" if dilated else "NAT"
  factory.__doc__ = f"{family}-{size.capitalize()}, kernel 7, 224x224."
  register_model(factory, name=f"{'dinat' if dilated else 'nat'}_{size}")


for _size in NAT_SIZES:
  _register(_size, False)
  _register(_size, True)
