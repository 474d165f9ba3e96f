"""Hybrid ViT (Dosovitskiy et al. 2021, "Hybrid Architecture";
Steiner et al. 2021, "How to train your ViT?"): a ResNet turns the image
into a feature map, whose positions are the ViT's tokens.

image -> ResNet v2-style backbone (weight-standardized convs + GroupNorm, as
BiT; not pre-activation: conv -> GN -> ReLU, the paper's "R50" with its 4th
stage removed and the 3rd one 9 blocks deep, or the 4-stage "R26") ->
1x1 conv "patch" embedding (patch size 1 on the feature map) -> the ViT of
vitjax.models.vit (class token, learned positions, encoder, head), reused
as is.

Convolutions and the stem's max-pool pad TensorFlow's 'SAME' way (the
checkpoints come from the JAX originals; timm's StdConv2dSame does the same).

`__call__(images, train=False)` returns `(logits, out)`; `out` holds the
backbone's 'stem' (after the max-pool) and 'stage_{i}' maps, and the ViT's
intermediates: 'patch_embed' (token grid), 'block_{i}', 'encoded',
'feature_map', 'pre_logits', 'logits'.
"""

from typing import Any, Tuple

import flax.linen as nn
import jax.numpy as jnp

from vitjax.errors import UserError
from vitjax.models.features import FeatureLevel
from vitjax.models.layers import StdConv
from vitjax.models.registry import register_checkpoint_fix, register_model
from vitjax.models.vit import VIT_SIZES, VisionTransformer, fix_pos_embedding


class GroupNormAct(nn.Module):
  """GroupNorm (32 groups) -> optional ReLU."""
  act: bool = True
  num_groups: int = 32
  eps: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = nn.GroupNorm(num_groups=self.num_groups, epsilon=self.eps, use_fast_variance=False,
                     dtype=self.dtype, name="gn")(x)
    return nn.relu(x) if self.act else x


class Bottleneck(nn.Module):
  """relu(shortcut + GN(conv1x1(relu(GN(conv3x3/s(relu(GN(conv1x1(x))))))))),
  the convs weight-standardized; the shortcut is a 1x1/s conv + GN in the
  first block of every stage (`project`)."""
  features: int
  strides: int = 1
  project: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    inner = self.features // 4
    kw = dict(dtype=self.dtype)
    shortcut = x
    if self.project:
      shortcut = StdConv(self.features, 1, self.strides, name="downsample_conv", **kw)(x)
      shortcut = GroupNormAct(act=False, name="downsample_norm", **kw)(shortcut)
    y = GroupNormAct(name="norm1", **kw)(StdConv(inner, 1, name="conv1", **kw)(x))
    y = GroupNormAct(name="norm2", **kw)(StdConv(inner, 3, self.strides, name="conv2", **kw)(y))
    y = GroupNormAct(act=False, name="norm3", **kw)(StdConv(self.features, 1, name="conv3",
                                                            **kw)(y))
    return nn.relu(y + shortcut)


class ResNetV2Backbone(nn.Module):
  """Stem (7x7/2 StdConv, GN, ReLU, 3x3/2 max-pool) and bottleneck stages of
  widths 256 * 2**i (stride 1 for the first stage, 2 after)."""
  stage_depths: Tuple[int, ...] = (3, 4, 9)
  stem_width: int = 64
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    out = {}
    x = StdConv(self.stem_width, 7, 2, name="stem_conv", dtype=self.dtype)(x)
    x = GroupNormAct(name="stem_norm", dtype=self.dtype)(x)
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
    out["stem"] = x
    for i, n in enumerate(self.stage_depths):
      for j in range(n):
        x = Bottleneck(256 * 2 ** i, strides=2 if (i > 0 and j == 0) else 1, project=j == 0,
                       dtype=self.dtype, name=f"stage_{i}_block_{j}")(x)
      out[f"stage_{i}"] = x
    return x, out


def total_stride(stage_depths) -> int:
  """Stem (4) times 2 per stage after the first."""
  return 4 * 2 ** (len(stage_depths) - 1)


class HybridVisionTransformer(nn.Module):
  """ResNet backbone + ViT over its feature map (one token per position).

  stage_depths: (3, 4, 9) for R50 (stride 16), (2, 2, 2, 2) for R26 (32).
  image_size: the input side; it must be a multiple of the backbone stride
    (the learned position embeddings are made for image_size / stride).
  The ViT fields are VisionTransformer's (vitjax.models.vit).
  """
  num_classes: int = 1000
  image_size: int = 224
  stage_depths: Tuple[int, ...] = (3, 4, 9)
  stem_width: int = 64
  hidden_size: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  pool: str = "cls"
  qkv_bias: bool = True
  dropout: float = 0.0
  attention_dropout: float = 0.0
  drop_path_rate: float = 0.0
  layer_norm_eps: float = 1e-6
  head_zero_init: bool = True
  remat: bool = False
  dtype: Any = jnp.float32

  def __post_init__(self):
    super().__post_init__()
    self.check_size(self.image_size, "image_size")  # at construction

  def check_size(self, size, what):
    if not self.stage_depths or min(self.stage_depths) < 1:
      raise UserError(f"Hybrid ViT: stage_depths={tuple(self.stage_depths)} needs >= 1 "
                      "stage of >= 1 block.")
    s = total_stride(self.stage_depths)
    if size < s or size % s:
      lo, hi = max(s, size // s * s), (size // s + 1) * s
      near = f"{lo} or {hi}" if lo != hi and lo != size else f"{hi}"
      raise UserError(
          f"Hybrid ViT: {what} {size} is not a multiple of the backbone's stride {s} "
          f"({len(self.stage_depths)} stages), so the feature map would not tile the image. "
          f"Nearest valid sizes: {near}.")

  def feature_levels(self):
    """The ResNet's 'stage_i' (stride 4 * 2^i, 256 * 2^i wide), then
    'feature_map' (the ViT's tokens at the CNN's total stride; models/features.py)."""
    stages = tuple(FeatureLevel(f"stage_{i}", 4 * 2 ** i, 256 * 2 ** i)
                   for i in range(len(self.stage_depths)))
    return stages + (FeatureLevel("feature_map", total_stride(self.stage_depths),
                                  self.hidden_size),)

  def layer_groups(self):
    """The CNN and the token embeddings, then the ViT's blocks (timm's grouping)."""
    stem = ("backbone", "vit/patch_embed", "vit/cls_token", "vit/pos_embedding")
    return (stem,) + tuple((f"vit/block_{i}",) for i in range(self.depth))

  @nn.compact
  def __call__(self, images, *, train: bool = False):
    _, h, w, _ = images.shape
    for side in {h, w}:
      self.check_size(side, "input size")
    feats, out = ResNetV2Backbone(tuple(self.stage_depths), self.stem_width, self.dtype,
                                  name="backbone")(images.astype(self.dtype))
    vit = VisionTransformer(
        num_classes=self.num_classes, patch_size=1, hidden_size=self.hidden_size,
        depth=self.depth, num_heads=self.num_heads, mlp_dim=self.mlp_dim, pool=self.pool,
        qkv_bias=self.qkv_bias, dropout=self.dropout, attention_dropout=self.attention_dropout,
        drop_path_rate=self.drop_path_rate, layer_norm_eps=self.layer_norm_eps,
        head_zero_init=self.head_zero_init, remat=self.remat, dtype=self.dtype, name="vit")
    logits, vit_out = vit(feats, train=train)
    vit_out["patch_embed"] = vit_out.pop("stem")
    out.update(vit_out)
    return logits, out


# A new input size: the ViT's position embedding is resampled (as for a ViT).
register_checkpoint_fix(HybridVisionTransformer)(fix_pos_embedding)

# R50+ViT-B/16 (ViT paper, hybrids) and R26+ViT-S/32 (AugReg, Steiner et al.
# 2021); the ViT widths are VIT_SIZES. Parameter counts equal timm's
# (R26+S/32: 36.43M, R50+B/16: 98.66M at 224 with 1000 classes).
HYBRID_MODELS = {
    "vit_small_r26_s32": dict(VIT_SIZES["small"], stage_depths=(2, 2, 2, 2)),
    "vit_base_r50_s16": dict(VIT_SIZES["base"], stage_depths=(3, 4, 9)),
}


def _register(name, size):
  def factory(**overrides):
    kw = dict(HYBRID_MODELS[name], image_size=size)
    kw.update(overrides)
    return HybridVisionTransformer(**kw)
  factory.__doc__ = f"Hybrid {name} (ResNet backbone + ViT) at {size}x{size}."
  register_model(factory, name=f"{name}_{size}")


for _name in HYBRID_MODELS:
  for _size in (224, 384):
    _register(_name, _size)
