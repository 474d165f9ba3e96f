"""MobileViT (Mehta & Rastegari 2022, "MobileViT: Light-weight,
General-purpose, and Mobile-friendly Vision Transformer").

image -> stem (3x3/2 conv, BN, SiLU) -> stage_0: one MobileNetV2 block ->
stage_1: three MobileNetV2 blocks (first stride 2) -> stage_2..4: a stride-2
MobileNetV2 block, then a MobileViT block -> 1x1 conv (BN, SiLU) -> global
average pool -> dropout -> linear head.

MobileNetV2 inverted residual (Sandler et al. 2018): 1x1 expand (x
`expand_ratio`, rounded to a multiple of 8), BN, SiLU -> 3x3 depthwise
(stride s), BN, SiLU -> 1x1 project, BN -> + input when the shape is kept.

MobileViT block (paper Sec. 3.1, Fig. 1b): 3x3 conv (BN, SiLU) -> 1x1 conv
to the transformer width d (no BN, no bias) -> unfold into 2x2 patches: the
pixels at the same position inside every patch form one sequence of
N = HW/4 tokens, and the P = 4 sequences are processed independently by L
pre-norm transformer layers (multi-head attention, SiLU MLP of width 2d) ->
LayerNorm -> fold back to the feature map -> 1x1 conv to C (BN, SiLU) ->
concat with the block's input -> 3x3 fuse conv (BN, SiLU).

Any input size, as the reference (HF / ml-cvnets): a map entering a
MobileViT block that does not split into whole 2x2 patches is resized
bilinearly (PyTorch's, align_corners=False) up to the next multiple before
the unfolding and back after the folding; v2's blocks unfold the whole
patches only (torch's `unfold` floors) and its `fold` leaves the remainder
rows / columns zero, as HF's.

`__call__(images, train=False)` returns `(logits, out)`; `out` holds 'stem',
'stage_0'..'stage_4' (NHWC), 'feature_map' (after the 1x1 head conv),
'pre_logits' (pooled) and 'logits'. BatchNorm statistics live in
'batch_stats'.

MobileViT v2 (Mehta & Rastegari 2022, "Separable Self-attention for Mobile
Vision Transformers") is `MobileViTV2` below.
"""

from typing import Any, Callable, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from vitjax.errors import UserError
from vitjax.models.features import FeatureLevel
from vitjax.models.layers import (Attention, ConvBN, DropPath, Mlp, resize_bilinear_torch,
                                  round_channels)
from vitjax.models.registry import register_model


def _silu(x):
  return jax.nn.silu(x)


class InvertedResidual(nn.Module):
  """MobileNetV2 block (see the module docstring)."""
  features: int
  expand_ratio: float = 4.0
  strides: int = 1
  act: Callable = _silu
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    d = x.shape[-1]
    hidden = round_channels(int(round(d * self.expand_ratio)), 8)
    y = ConvBN(hidden, 1, act=self.act, dtype=self.dtype, name="expand")(x, train)
    y = ConvBN(hidden, 3, self.strides, groups=hidden, act=self.act, dtype=self.dtype,
               name="dwconv")(y, train)
    y = ConvBN(self.features, 1, dtype=self.dtype, name="project")(y, train)
    if self.strides == 1 and d == self.features:
      y = x + y
    return y


def unfold(x, patch: int):
  """[B, H, W, C] -> [B * P, N, C]: sequence p holds pixel p (row-major inside
  the patch) of every patch; N = (H / patch) * (W / patch), P = patch**2."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // patch, patch, w // patch, patch, c)
  x = x.transpose(0, 2, 4, 1, 3, 5)
  return x.reshape(b * patch * patch, (h // patch) * (w // patch), c)


def fold(x, patch: int, b: int, h: int, w: int):
  """The inverse of `unfold`."""
  c = x.shape[-1]
  x = x.reshape(b, patch, patch, h // patch, w // patch, c)
  x = x.transpose(0, 3, 1, 4, 2, 5)
  return x.reshape(b, h, w, c)


class TransformerLayer(nn.Module):
  """Pre-norm transformer layer: x + MHSA(LN(x)), then x + MLP(LN(x))."""
  num_heads: int
  mlp_ratio: float = 2.0
  dropout: float = 0.1
  attention_dropout: float = 0.0
  drop_path: float = 0.0
  ln_eps: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    det = not train
    y = nn.LayerNorm(self.ln_eps, dtype=self.dtype, name="norm1")(x)
    y = Attention(self.num_heads, attention_dropout=self.attention_dropout,
                  dropout=self.dropout, dtype=self.dtype, name="attn")(y, det)
    x = x + DropPath(self.drop_path)(y, det)
    y = nn.LayerNorm(self.ln_eps, dtype=self.dtype, name="norm2")(x)
    y = Mlp(int(x.shape[-1] * self.mlp_ratio), dropout=self.dropout, act=_silu,
            dtype=self.dtype, name="mlp")(y, det)
    return x + DropPath(self.drop_path)(y, det)


class MobileViTBlock(nn.Module):
  """Local conv -> transformer over unfolded patches -> fold -> fuse (v1)."""
  dim: int
  depth: int
  num_heads: int = 4
  patch_size: int = 2
  mlp_ratio: float = 2.0
  dropout: float = 0.1
  attention_dropout: float = 0.0
  drop_path: float = 0.0
  ln_eps: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    b, h, w, c = x.shape
    p = self.patch_size
    y = ConvBN(c, 3, act=_silu, dtype=self.dtype, name="conv_kxk")(x, train)
    y = nn.Conv(self.dim, (1, 1), use_bias=False, dtype=self.dtype, name="conv_1x1")(y)
    hn, wn = h + -h % p, w + -w % p  # HF: resized up to whole patches, and back
    y = resize_bilinear_torch(y, (hn, wn))
    t = unfold(y, p)
    for i in range(self.depth):
      t = TransformerLayer(self.num_heads, self.mlp_ratio, self.dropout,
                           self.attention_dropout, self.drop_path, self.ln_eps,
                           dtype=self.dtype, name=f"transformer_{i}")(t, train)
    t = nn.LayerNorm(self.ln_eps, dtype=self.dtype, name="norm")(t)
    y = resize_bilinear_torch(fold(t, p, b, hn, wn), (h, w))
    y = ConvBN(c, 1, act=_silu, dtype=self.dtype, name="conv_proj")(y, train)
    return ConvBN(c, 3, act=_silu, dtype=self.dtype, name="fusion")(
        jnp.concatenate([x, y], axis=-1), train)


def mobilevit_layer_groups(stage_1_blocks: int):
  """Block order of MobileViT v1 / v2: stem; stage_0's block; stage_1's
  blocks; then stages 2-4 as (strided block, MobileViT block) pairs."""
  groups = [("stem",), ("stage_0_block_0",)]
  groups += [(f"stage_1_block_{j}",) for j in range(stage_1_blocks)]
  for i in range(2, 5):
    groups += [(f"stage_{i}_down",), (f"stage_{i}_mobilevit",)]
  return tuple(groups)


class MobileViT(nn.Module):
  """MobileViT (v1) classifier over NHWC images.

  widths: channels of (stem, stage_0, ..., stage_4, head conv), as HF's
    `neck_hidden_sizes` (paper Table 4 / Appendix).
  dims: transformer widths d of the MobileViT blocks of stages 2-4.
  depths: transformer layers L of those blocks (2, 4, 3 in the paper).
  expand_ratio: MobileNetV2 expansion (2 for XXS, 4 otherwise).
  num_classes: 0 gives no head (logits are the pooled features).
  """
  num_classes: int = 1000
  widths: Tuple[int, ...] = (16, 32, 64, 96, 128, 160, 640)
  dims: Tuple[int, ...] = (144, 192, 240)
  depths: Tuple[int, ...] = (2, 4, 3)
  num_heads: int = 4
  expand_ratio: float = 4.0
  mlp_ratio: float = 2.0
  patch_size: int = 2
  dropout: float = 0.1
  attention_dropout: float = 0.0
  classifier_dropout: float = 0.1
  drop_path_rate: float = 0.0
  ln_eps: float = 1e-5
  dtype: Any = jnp.float32

  def __post_init__(self):
    super().__post_init__()
    if len(self.widths) != 7 or min(self.widths) < 1:
      raise UserError(f"MobileViT widths={self.widths}: expected 7 positive channel "
                      "counts (stem, 5 stages, head conv).")
    if len(self.dims) != 3 or len(self.depths) != 3:
      raise UserError(f"MobileViT dims={self.dims} / depths={self.depths}: expected "
                      "3 entries each (stages 2-4).")
    bad = [d for d in self.dims if d % self.num_heads]
    if bad:
      raise UserError(f"MobileViT transformer widths {bad} are not divisible by "
                      f"num_heads={self.num_heads}.")
    if self.patch_size < 1:
      raise UserError(f"MobileViT patch_size={self.patch_size} must be >= 1.")

  def feature_levels(self):
    """'stage_0'..'stage_4' at strides 2, 4, 8, 16, 32 (models/features.py)."""
    w = self.widths
    return tuple(FeatureLevel(f"stage_{i}", 2 ** (i + 1), w[i + 1]) for i in range(5))

  def layer_groups(self):
    """The stem, the MobileNet blocks, then each stage's strided block and
    MobileViT block (models/features.py)."""
    return mobilevit_layer_groups(3)

  @nn.compact
  def __call__(self, images, *, train: bool = False):
    w, out = self.widths, {}
    x = ConvBN(w[0], 3, 2, act=_silu, dtype=self.dtype, name="stem")(
        images.astype(self.dtype), train)
    out["stem"] = x
    ir = dict(expand_ratio=self.expand_ratio, dtype=self.dtype)
    x = InvertedResidual(w[1], name="stage_0_block_0", **ir)(x, train)
    out["stage_0"] = x
    for j in range(3):
      x = InvertedResidual(w[2], strides=2 if j == 0 else 1, name=f"stage_1_block_{j}",
                           **ir)(x, train)
    out["stage_1"] = x
    total = sum(self.depths)
    k = 0
    for i, (dim, depth) in enumerate(zip(self.dims, self.depths)):
      x = InvertedResidual(w[3 + i], strides=2, name=f"stage_{i + 2}_down", **ir)(x, train)
      # Stochastic depth grows linearly over the transformer layers.
      x = MobileViTBlock(dim, depth, self.num_heads, self.patch_size, self.mlp_ratio,
                         self.dropout, self.attention_dropout,
                         self.drop_path_rate * k / max(total, 1), self.ln_eps,
                         dtype=self.dtype, name=f"stage_{i + 2}_mobilevit")(x, train)
      k += depth
      out[f"stage_{i + 2}"] = x
    x = ConvBN(w[6], 1, act=_silu, dtype=self.dtype, name="head_conv")(x, train)
    out["feature_map"] = x
    pooled = jnp.mean(x, axis=(1, 2))
    out["pre_logits"] = pooled
    if not self.num_classes:
      return pooled.astype(jnp.float32), out
    pooled = nn.Dropout(self.classifier_dropout)(pooled, deterministic=not train)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(pooled)
    out["logits"] = logits
    return logits.astype(jnp.float32), out


# Paper Table 4 / Appendix A: channels (stem, 5 stages, head conv), transformer
# widths d, MobileNetV2 expansion; params (M, 1000 classes): XXS 1.3, XS 2.3,
# S 5.6; 256x256 input.
MOBILEVIT_SIZES = {
    "xxs": ((16, 16, 24, 48, 64, 80, 320), (64, 80, 96), 2.0),
    "xs": ((16, 32, 48, 64, 80, 96, 384), (96, 120, 144), 4.0),
    "s": ((16, 32, 64, 96, 128, 160, 640), (144, 192, 240), 4.0),
}


def _register_v1(size):
  widths, dims, expand = MOBILEVIT_SIZES[size]
  def factory(**overrides):
    kw = dict(widths=widths, dims=dims, expand_ratio=expand)
    if size == "xxs":
      kw["dropout"] = 0.05
    kw.update(overrides)
    return MobileViT(**kw)
  factory.__doc__ = f"MobileViT-{size.upper()}: widths {widths}, d {dims}, 256x256 input."
  register_model(factory, name=f"mobilevit_{size}")


for _size in MOBILEVIT_SIZES:
  _register_v1(_size)


# ----------------------------------------------------------------------------
# MobileViT v2 (Mehta & Rastegari 2022, "Separable Self-attention for Mobile
# Vision Transformers").
#
# Same skeleton as v1 (stem, two MobileNetV2 stages -- stage_1 has 2 blocks
# here --, three stride-2 MobileNetV2 + MobileViT-v2 blocks, pool, head; no
# 1x1 head conv), every width scaled by one multiplier alpha (paper Sec. 4,
# widths 0.5 ... 2.0). Changes in the block (paper Fig. 4 / Sec. 3.3):
# - the local 3x3 conv is depthwise; there is no concat-and-fuse: the block
#   ends with the 1x1 projection (BN, no activation);
# - the norms are GroupNorm with one group over (pixel-in-patch, patch,
#   channel), i.e. a LayerNorm over the whole unfolded map of an image;
# - separable self-attention replaces multi-head attention: a 1x1 projection
#   gives a 1-channel query I, keys K and values V; context scores
#   c = softmax(I) over the N patches (separately for each of the P pixel
#   positions); context vector cv = sum_n c_n K_n; out = W_o (ReLU(V) * cv).
#   Cost is linear in N: no N x N matrix is formed.


class SeparableSelfAttention(nn.Module):
  """Separable (linear) self-attention over [B, P, N, d] (see above)."""
  attention_dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    d = x.shape[-1]
    qkv = nn.Dense(1 + 2 * d, dtype=self.dtype, name="qkv")(x)
    query, key, value = qkv[..., :1], qkv[..., 1:1 + d], qkv[..., 1 + d:]
    scores = jax.nn.softmax(query.astype(jnp.float32), axis=2).astype(key.dtype)
    self.sow("intermediates", "context_scores", scores)
    scores = nn.Dropout(self.attention_dropout)(scores, deterministic=deterministic)
    context = jnp.sum(key * scores, axis=2, keepdims=True)  # [B, P, 1, d]
    return nn.Dense(d, dtype=self.dtype, name="proj")(jax.nn.relu(value) * context)


class TransformerLayerV2(nn.Module):
  """x + Attn(GN(x)), then x + FFN(GN(x)); GN: GroupNorm with one group."""
  ffn_dim: int
  dropout: float = 0.0
  attention_dropout: float = 0.0
  drop_path: float = 0.0
  ln_eps: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    det = not train
    y = nn.GroupNorm(num_groups=1, epsilon=self.ln_eps, dtype=self.dtype, name="norm1")(x)
    y = SeparableSelfAttention(self.attention_dropout, dtype=self.dtype, name="attn")(y, det)
    x = x + DropPath(self.drop_path)(y, det)
    y = nn.GroupNorm(num_groups=1, epsilon=self.ln_eps, dtype=self.dtype, name="norm2")(x)
    y = Mlp(self.ffn_dim, dropout=self.dropout, act=_silu, dtype=self.dtype, name="mlp")(y, det)
    return x + DropPath(self.drop_path)(y, det)


class MobileViTV2Block(nn.Module):
  """Depthwise 3x3 -> 1x1 to d -> unfold -> separable-attention layers -> GN ->
  fold -> 1x1 projection back (BN)."""
  dim: int
  depth: int
  ffn_dim: int
  patch_size: int = 2
  dropout: float = 0.0
  attention_dropout: float = 0.0
  drop_path: float = 0.0
  ln_eps: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    b, h, w, c = x.shape
    p = self.patch_size
    y = ConvBN(c, 3, groups=c, act=_silu, dtype=self.dtype, name="conv_kxk")(x, train)
    y = nn.Conv(self.dim, (1, 1), use_bias=False, dtype=self.dtype, name="conv_1x1")(y)
    hf, wf = h // p * p, w // p * p  # HF: unfold floors, fold leaves the rest zero
    y = y[:, :hf, :wf]
    t = unfold(y, p).reshape(b, p * p, (h // p) * (w // p), self.dim)
    for i in range(self.depth):
      t = TransformerLayerV2(self.ffn_dim, self.dropout, self.attention_dropout,
                             self.drop_path, self.ln_eps, dtype=self.dtype,
                             name=f"transformer_{i}")(t, train)
    t = nn.GroupNorm(num_groups=1, epsilon=self.ln_eps, dtype=self.dtype, name="norm")(t)
    y = fold(t.reshape(b * p * p, -1, self.dim), p, b, hf, wf)
    y = jnp.pad(y, ((0, 0), (0, h - hf), (0, w - wf), (0, 0)))
    return ConvBN(c, 1, dtype=self.dtype, name="conv_proj")(y, train)


# Paper Sec. 4 / the reference configuration at width 1.0: stage widths
# (stem, stage_0..4), transformer widths d of stages 2-4, and their depths.
V2_WIDTHS = (32, 64, 128, 256, 384, 512)
V2_DIMS = (128, 192, 256)
V2_DEPTHS = (2, 4, 3)
V2_PUBLISHED = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)


class MobileViTV2(nn.Module):
  """MobileViT v2 classifier over NHWC images.

  width_mult: alpha, scaling every width (stem clipped to [16, 64]; stage_0 to
    a multiple of 16, the others of 8).
  ffn_multiplier: FFN width = ffn_multiplier * d, floored to a multiple of 16.
  num_classes: 0 gives no head (logits are the pooled features).
  """
  num_classes: int = 1000
  width_mult: float = 1.0
  depths: Tuple[int, ...] = V2_DEPTHS
  expand_ratio: float = 2.0
  ffn_multiplier: float = 2.0
  patch_size: int = 2
  dropout: float = 0.0
  attention_dropout: float = 0.0
  classifier_dropout: float = 0.1
  drop_path_rate: float = 0.0
  ln_eps: float = 1e-5
  dtype: Any = jnp.float32

  def __post_init__(self):
    super().__post_init__()
    wm = self.width_mult
    if not isinstance(wm, (int, float)) or not wm > 0 or wm > 16:
      raise UserError(
          f"MobileViTV2 width_mult={wm!r}: must be a number in (0, 16] (it scales "
          f"every channel count); the published multipliers are "
          f"{', '.join(map(str, V2_PUBLISHED))}"
          + (f" (nearest: {min(V2_PUBLISHED, key=lambda v: abs(v - wm))})"
             if isinstance(wm, (int, float)) and wm == wm else "") + ".")
    if len(self.depths) != 3 or min(self.depths) < 1:
      raise UserError(f"MobileViTV2 depths={self.depths}: expected 3 positive layer "
                      "counts (stages 2-4).")
    if self.patch_size < 1:
      raise UserError(f"MobileViTV2 patch_size={self.patch_size} must be >= 1.")

  def widths(self):
    """(stem, stage_0, ..., stage_4) channel counts at this width."""
    a = self.width_mult
    stem = round_channels(min(max(32 * a, 16), 64), 8, min_value=16)
    return (stem, round_channels(64 * a, 16)) + tuple(
        round_channels(c * a, 8) for c in V2_WIDTHS[2:])

  def dims(self):
    return tuple(round_channels(d * self.width_mult, 8) for d in V2_DIMS)

  def feature_levels(self):
    """'stage_0'..'stage_4' at strides 2, 4, 8, 16, 32 (models/features.py)."""
    w = self.widths()
    return tuple(FeatureLevel(f"stage_{i}", 2 ** (i + 1), w[i + 1]) for i in range(5))

  def layer_groups(self):
    """As MobileViT's, with two stage-1 blocks."""
    return mobilevit_layer_groups(2)

  @nn.compact
  def __call__(self, images, *, train: bool = False):
    w, out = self.widths(), {}
    x = ConvBN(w[0], 3, 2, act=_silu, dtype=self.dtype, name="stem")(
        images.astype(self.dtype), train)
    out["stem"] = x
    ir = dict(expand_ratio=self.expand_ratio, dtype=self.dtype)
    x = InvertedResidual(w[1], name="stage_0_block_0", **ir)(x, train)
    out["stage_0"] = x
    for j in range(2):
      x = InvertedResidual(w[2], strides=2 if j == 0 else 1, name=f"stage_1_block_{j}",
                           **ir)(x, train)
    out["stage_1"] = x
    total, k = sum(self.depths), 0
    for i, (dim, depth) in enumerate(zip(self.dims(), self.depths)):
      x = InvertedResidual(w[3 + i], strides=2, name=f"stage_{i + 2}_down", **ir)(x, train)
      x = MobileViTV2Block(dim, depth, int(self.ffn_multiplier * dim) // 16 * 16,
                           self.patch_size, self.dropout, self.attention_dropout,
                           self.drop_path_rate * k / max(total, 1), self.ln_eps,
                           dtype=self.dtype, name=f"stage_{i + 2}_mobilevit")(x, train)
      k += depth
      out[f"stage_{i + 2}"] = x
    out["feature_map"] = x
    pooled = jnp.mean(x, axis=(1, 2))
    out["pre_logits"] = pooled
    if not self.num_classes:
      return pooled.astype(jnp.float32), out
    pooled = nn.Dropout(self.classifier_dropout)(pooled, deterministic=not train)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(pooled)
    out["logits"] = logits
    return logits.astype(jnp.float32), out


def _register_v2(mult):
  def factory(**overrides):
    kw = dict(width_mult=mult)
    kw.update(overrides)
    return MobileViTV2(**kw)
  factory.__doc__ = f"MobileViT v2, width x{mult}, 256x256 input."
  register_model(factory, name=f"mobilevitv2_{int(round(mult * 100)):03d}")


for _mult in V2_PUBLISHED:
  _register_v2(_mult)
