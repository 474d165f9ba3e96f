"""SegFormer (Xie et al. 2021, "SegFormer: Simple and Efficient Design for
Semantic Segmentation with Transformers").

image -> Mix Transformer (MiT) encoder -> 4 feature maps at 1/4, 1/8, 1/16,
1/32 of the input -> all-MLP decoder -> per-pixel class logits at 1/4.

Encoder (paper Sec. 3.1): MiT is the hierarchical encoder that PVT v2 also
is: overlapping patch merging (strided conv k7 s4, then k3 s2, LayerNorm),
efficient self-attention with sequence reduction R_i = (8, 4, 2, 1) and
Mix-FFN (fc1 -> 3x3 depthwise conv -> GELU -> fc2, no position encoding).
It is `vitjax.models.pvt.PyramidVisionTransformerV2` without its head, with
the MiT settings: MLP ratio 4 in every stage and LayerNorm epsilon 1e-5.

All-MLP decoder (Sec. 3.2, Eq. 1), with C = `decoder_dim`:
  F_i' = Linear(C_i -> C)(F_i), upsampled bilinearly to H/4 x W/4;
  F = Linear(4C -> C)(concat(F_4', F_3', F_2', F_1'))   (a 1x1 conv + BatchNorm + ReLU)
  M = Linear(C -> num_classes)(Dropout(F)).

`__call__(images, train=False)` returns `(logits, out)`: logits are
[B, ~H/4, ~W/4, num_classes] (the task upsamples them to the input size, as
the paper does); `out` holds 'stage_{i}' (the encoder maps), 'encoded' (the
last of them), 'pre_logits' (the fused decoder features F at 1/4) and
'logits'. Inputs: any size, as HF (the encoder's strided convs floor, every
stage map is upsampled to stage 0's size: 97x131 -> 25x33 logits).

Weights: vitjax.convert.segformer imports HF `SegformerForSemanticSegmentation`.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vitjax.errors import UserError
from vitjax.models.features import select_features
from vitjax.models.layers import ConvBN
from vitjax.models.pvt import PyramidVisionTransformerV2
from vitjax.models.registry import register_model

_TRUNC = nn.initializers.truncated_normal(stddev=0.02)


def resize_bilinear(x, height: int, width: int):
  """NHWC bilinear resize with half-pixel centres (torch align_corners=False
  when upsampling)."""
  b, h, w, c = x.shape
  if (h, w) == (height, width):
    return x
  return jax.image.resize(x, (b, height, width, c), "bilinear", antialias=False)


class SegFormer(nn.Module):
  """MiT encoder + all-MLP decoder -> logits at 1/4 of the input.

  embed_dims / depths / num_heads / mlp_ratios / sr_ratios / patch_sizes /
  strides: the MiT encoder per stage (see PyramidVisionTransformerV2).
  decoder_dim: C of the all-MLP decoder (256 for B0/B1, 768 for B2-B5).
  dropout: before the classifier (0.1 in the paper's recipe).
  drop_path_rate: stochastic depth of the encoder, linear from 0.
  """
  num_classes: int = 150
  embed_dims: Sequence[int] = (32, 64, 160, 256)
  depths: Sequence[int] = (2, 2, 2, 2)
  num_heads: Sequence[int] = (1, 2, 5, 8)
  mlp_ratios: Sequence[float] = (4, 4, 4, 4)
  sr_ratios: Sequence[int] = (8, 4, 2, 1)
  patch_sizes: Sequence[int] = (7, 3, 3, 3)
  strides: Sequence[int] = (4, 2, 2, 2)
  decoder_dim: int = 256
  qkv_bias: bool = True
  dropout: float = 0.1
  encoder_dropout: float = 0.0
  attention_dropout: float = 0.0
  drop_path_rate: float = 0.1
  layer_norm_eps: float = 1e-5
  bn_momentum: float = 0.9
  bn_eps: float = 1e-5
  dtype: Any = jnp.float32

  def _checks(self):
    if not isinstance(self.num_classes, int) or self.num_classes < 1:
      raise UserError(f"SegFormer needs num_classes >= 1 (one logit map per class), got "
                      f"{self.num_classes!r}.")
    if not isinstance(self.decoder_dim, int) or self.decoder_dim < 1:
      raise UserError(f"SegFormer: decoder_dim must be a positive integer (256 for B0/B1, "
                      f"768 for B2-B5), got {self.decoder_dim!r}.")

  def mit_encoder(self, **kw):
    """The MiT encoder (PVT v2 without a head); `kw`: name or parent."""
    return PyramidVisionTransformerV2(
        num_classes=0, embed_dims=self.embed_dims, depths=self.depths,
        num_heads=self.num_heads, mlp_ratios=self.mlp_ratios, sr_ratios=self.sr_ratios,
        patch_sizes=self.patch_sizes, strides=self.strides, qkv_bias=self.qkv_bias,
        dropout=self.encoder_dropout, attention_dropout=self.attention_dropout,
        drop_path_rate=self.drop_path_rate, layer_norm_eps=self.layer_norm_eps,
        dtype=self.dtype, **kw)

  def feature_levels(self):
    """The encoder's 'stage_i' levels, returned under the same keys (models/features.py)."""
    return self.mit_encoder(parent=None).feature_levels()

  def layer_groups(self):
    """The encoder's blocks; the decode head is the top layer (models/features.py)."""
    return tuple(tuple(f"encoder/{n}" for n in g)
                 for g in self.mit_encoder(parent=None).layer_groups())

  @nn.compact
  def __call__(self, images, *, train: bool = False):
    self._checks()
    encoder = self.mit_encoder(name="encoder")
    _, enc = encoder(images, train=train)
    maps = select_features(encoder, enc, levels="all")
    out = {f"stage_{i}": m for i, m in enumerate(maps)}
    out["encoded"] = maps[-1]
    _, h, w, _ = maps[0].shape
    projected = [
        resize_bilinear(nn.Dense(self.decoder_dim, dtype=self.dtype, kernel_init=_TRUNC,
                                 name=f"decode_linear_{i}")(m), h, w)
        for i, m in enumerate(maps)]
    x = ConvBN(self.decoder_dim, kernel_size=1, act=nn.relu, bn_momentum=self.bn_momentum,
               bn_eps=self.bn_eps, dtype=self.dtype, name="decode_fuse")(
                   jnp.concatenate(projected[::-1], axis=-1), train=train)
    out["pre_logits"] = x
    x = nn.Dropout(self.dropout)(x, deterministic=not train)
    logits = nn.Conv(self.num_classes, (1, 1), dtype=self.dtype, kernel_init=_TRUNC,
                     name="head")(x)
    out["logits"] = logits
    return logits.astype(jnp.float32), out


# Paper Table 1 / Sec. 4.1 (MiT-B0..B5: widths, depths; heads 1, 2, 5, 8;
# reductions 8, 4, 2, 1; MLP ratio 4) and Table 1 / 2 (decoder C = 256 for
# B0/B1, 768 for B2-B5). Published parameters with the 150-class ADE20K head
# (Table 2, encoder + decoder): B0 3.8M, B1 13.7M, B2 27.5M, B3 47.3M,
# B4 64.1M, B5 84.7M.
SEGFORMER_SIZES = {
    "b0": dict(embed_dims=(32, 64, 160, 256), depths=(2, 2, 2, 2), decoder_dim=256),
    "b1": dict(embed_dims=(64, 128, 320, 512), depths=(2, 2, 2, 2), decoder_dim=256),
    "b2": dict(embed_dims=(64, 128, 320, 512), depths=(3, 4, 6, 3), decoder_dim=768),
    "b3": dict(embed_dims=(64, 128, 320, 512), depths=(3, 4, 18, 3), decoder_dim=768),
    "b4": dict(embed_dims=(64, 128, 320, 512), depths=(3, 8, 27, 3), decoder_dim=768),
    "b5": dict(embed_dims=(64, 128, 320, 512), depths=(3, 6, 40, 3), decoder_dim=768),
}


def _register(size):
  def factory(**overrides):
    kw = dict(SEGFORMER_SIZES[size])
    kw.update(overrides)
    return SegFormer(**kw)
  factory.__doc__ = f"SegFormer-{size.upper()} (MiT-{size.upper()} + all-MLP decoder)."
  register_model(factory, name=f"segformer_{size}")


for _size in SEGFORMER_SIZES:
  _register(_size)
