"""MaskFormer (Cheng et al. 2021, "Per-Pixel Classification is Not All You Need
for Semantic Segmentation").

Mask classification instead of per-pixel classification: N queries each
predict a class (C classes + "no object") and a binary mask.

  image -> backbone (Swin or ResNet from the registry) -> 4 stage maps
    (Swin: each followed by its own LayerNorm, as the released models)
  pixel decoder (paper Sec. 3.3, an FPN): the last map -> 3x3 conv + GroupNorm(32)
    + ReLU; then, from coarse to fine, each lateral map -> 1x1 conv + GN, plus
    the coarser output upsampled (nearest) -> 3x3 conv + GN + ReLU; the 1/4 map
    -> 3x3 conv -> per-pixel embeddings E_pixel [B, H/4, W/4, C_E]
  transformer decoder (DETR's post-norm DecoderLayer from detr.py): N learned query positions, zero
    targets; per layer self-attention (queries + positions as q/k),
    cross-attention to the (1x1-projected) last backbone map with 2D sine
    positions on the keys, ReLU FFN; a shared final LayerNorm
  heads: class logits Linear(D -> C + 1); mask embeddings MLP(D, D, C_E)
    (3 layers, ReLU); mask logits = einsum(mask_embed, E_pixel) [B, N, H/4, W/4]

`__call__(images, train=False)` returns `(class_logits [B, N, C + 1], out)`;
`out` holds 'stage_{i}' (the backbone's maps, one per stride, after the Swin norms), 'encoded'
(the last one), 'pixel_embeddings', 'masks' [B, N, H/4, W/4], 'pre_logits'
(decoder output [B, N, D]) and 'aux': one {'logits', 'masks'} per earlier
decoder layer (for the auxiliary losses). The loss, matching, semantic and
panoptic inference are in vitjax/tasks/mask_classification.py.

Weights: vitjax.convert.maskformer imports HF `MaskFormerForInstanceSegmentation`.
Parity with HF needs every Swin stage map larger than the window (HF's
MaskFormer-Swin pads instead of clamping the window, see swin.py).
"""

from typing import Any, Mapping, Optional

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from vitjax.errors import UserError
from vitjax.models.detr import DecoderLayer
from vitjax.models.features import (create_backbone, feature_levels, select_features,
                                     select_levels)
from vitjax.models.layers import sine_posemb_2d
from vitjax.models.registry import register_model

_XAVIER = nn.initializers.xavier_uniform()


def resize_nearest_torch(x, height: int, width: int, axes=(1, 2)):
  """Nearest resize of `axes` as torch's F.interpolate(mode='nearest'):
  source index floor(i * in / out) (not half-pixel centres)."""
  for axis, out in zip(axes, (height, width)):
    n = x.shape[axis]
    if n != out:
      idx = np.minimum(np.floor(np.arange(out) * (n / out)).astype(np.int64), n - 1)
      x = jnp.take(x, jnp.asarray(idx), axis=axis)
  return x


class ConvGN(nn.Module):
  """Conv (no bias) + GroupNorm(32) [+ ReLU]: the FPN's unit."""
  features: int
  kernel_size: int = 3
  relu: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    x = nn.Conv(self.features, (k, k), padding=k // 2, use_bias=False, dtype=self.dtype,
                kernel_init=_XAVIER, name="conv")(x)
    x = nn.GroupNorm(num_groups=32, epsilon=1e-5, use_fast_variance=False, dtype=self.dtype,
                     name="norm")(x)
    return nn.relu(x) if self.relu else x


class PixelDecoder(nn.Module):
  """FPN over the stage maps (fine -> coarse order) -> per-pixel embeddings
  at the finest map's resolution."""
  fpn_dim: int = 256
  mask_dim: int = 256
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, maps):
    x = ConvGN(self.fpn_dim, 3, dtype=self.dtype, name="stem")(maps[-1])
    for i, left in enumerate(maps[-2::-1]):
      left = ConvGN(self.fpn_dim, 1, relu=False, dtype=self.dtype, name=f"layer_{i}_proj")(left)
      x = resize_nearest_torch(x, left.shape[1], left.shape[2]) + left
      x = ConvGN(self.fpn_dim, 3, dtype=self.dtype, name=f"layer_{i}_block")(x)
    return nn.Conv(self.mask_dim, (3, 3), padding=1, dtype=self.dtype, kernel_init=_XAVIER,
                   name="mask_projection")(x)


class MaskFormer(nn.Module):
  """Backbone + pixel decoder + transformer decoder -> (class, mask) per query.

  backbone: a registered backbone's name (Swin, ResNet, ConvNeXt, PVT v2, ...:
    one map per feature stride feeds the pixel decoder, vitjax/models/features.py;
    a plain ViT through ViTDet's simple feature pyramid);
    backbone_kwargs: overrides for it (e.g. depths, drop_path_rate).
  stage_norms: a LayerNorm on every stage map (MaskFormer's Swin backbone).
  num_classes: C (the no-object class C is added); num_queries: N.
  hidden_dim: D of the transformer decoder; fpn_dim / mask_dim: pixel decoder
    widths (multiples of 32: GroupNorm(32)); decoder_layers / num_heads /
    ffn_dim / dropout: the DETR decoder.
  """
  num_classes: int = 150
  backbone: str = "swin_tiny_patch4_window7_224"
  backbone_kwargs: Optional[Mapping[str, Any]] = None
  stage_norms: bool = True
  num_queries: int = 100
  hidden_dim: int = 256
  fpn_dim: int = 256
  mask_dim: int = 256
  decoder_layers: int = 6
  num_heads: int = 8
  ffn_dim: int = 2048
  dropout: float = 0.1
  dtype: Any = jnp.float32

  def __post_init__(self):
    super().__post_init__()
    for name in ("fpn_dim", "mask_dim"):
      v = getattr(self, name)
      if v < 32 or v % 32:
        raise UserError(f"MaskFormer {name}={v} must be a multiple of 32 (GroupNorm with 32 "
                        f"groups); nearest valid: {max(32, v // 32 * 32)} or {(v // 32 + 1) * 32}.")
    if self.hidden_dim % self.num_heads:
      raise UserError(f"MaskFormer hidden_dim={self.hidden_dim} is not divisible by "
                      f"num_heads={self.num_heads}.")
    if self.num_queries < 1 or self.decoder_layers < 1:
      raise UserError("MaskFormer needs num_queries >= 1 and decoder_layers >= 1, got "
                      f"{self.num_queries} and {self.decoder_layers}.")

  @nn.compact
  def __call__(self, images, *, train: bool = False):
    deterministic = not train
    # A plain ViT gets ViTDet's simple feature pyramid (models/features.py).
    backbone = create_backbone(self.backbone, self.backbone_kwargs, multi_scale=True).clone(
        parent=self, name="backbone")
    if len(select_levels(backbone)) < 2:
      raise UserError(f"MaskFormer backbone {self.backbone!r} has one feature stride "
                      f"({feature_levels(backbone)[0].stride}); its pixel decoder needs >= 2. "
                      "Use a hierarchical backbone (resnet50, swin_*, convnext_*, pvt_v2_*) or "
                      "leave backbone_kwargs.simple_pyramid unset for a plain ViT.")
    _, feats = backbone(images, train=train)
    maps = select_features(backbone, feats)  # one per stride, fine to coarse
    if self.stage_norms:
      maps = [nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name=f"stage_norm_{i}")(m)
              for i, m in enumerate(maps)]
    out = {f"stage_{i}": m for i, m in enumerate(maps)}
    out["stem"] = feats.get("stem")
    out["encoded"] = maps[-1]

    pixel = PixelDecoder(self.fpn_dim, self.mask_dim, self.dtype, name="pixel_decoder")(maps)
    out["pixel_embeddings"] = pixel

    # Transformer decoder over the last (coarsest) map.
    mem = maps[-1]
    b, h, w, c = mem.shape
    if c != self.hidden_dim:
      mem = nn.Conv(self.hidden_dim, (1, 1), dtype=self.dtype, kernel_init=_XAVIER,
                    name="input_projection")(mem)
    mem = mem.reshape(b, h * w, self.hidden_dim)
    mem_pos = sine_posemb_2d(h, w, self.hidden_dim)[None].astype(mem.dtype)
    query_pos = self.param("query_embed", nn.initializers.normal(1.0),
                           (self.num_queries, self.hidden_dim))
    query_pos = jnp.broadcast_to(query_pos.astype(mem.dtype)[None],
                                 (b, self.num_queries, self.hidden_dim))
    tgt = jnp.zeros_like(query_pos)
    final_norm = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="decoder_norm")
    class_head = nn.Dense(self.num_classes + 1, dtype=self.dtype, name="class_head")
    mlp = [nn.Dense(d, dtype=self.dtype, kernel_init=_XAVIER, name=f"mask_embed_{i}")
           for i, d in enumerate((self.hidden_dim, self.hidden_dim, self.mask_dim))]

    def predict(hs):
      e = hs
      for i, layer in enumerate(mlp):
        e = layer(e)
        e = nn.relu(e) if i < len(mlp) - 1 else e
      masks = jnp.einsum("bqc,bhwc->bqhw", e, pixel)
      return class_head(hs).astype(jnp.float32), masks.astype(jnp.float32)

    aux = []
    for i in range(self.decoder_layers):
      tgt = DecoderLayer(self.hidden_dim, self.num_heads, self.ffn_dim, self.dropout,
                         self.dtype, name=f"decoder_layer_{i}")(tgt, query_pos, mem, mem_pos,
                                                                deterministic)
      if i < self.decoder_layers - 1:
        logits, masks = predict(final_norm(tgt))
        aux.append({"logits": logits, "masks": masks})
    hs = final_norm(tgt)
    logits, masks = predict(hs)
    out.update(pre_logits=hs, masks=masks, aux=aux, logits=logits)
    return logits, out


# Paper Table 1 / Sec. 4 (ADE20K, 150 classes): MaskFormer with Swin-T 42M params,
# ResNet-50 41M; N = 100 queries, 6 decoder layers, D = C_E = 256 (vitjax at 150 classes:
# 41,758,545 and 41,307,863 parameters, -0.6% / +0.7%).
MASKFORMER_BACKBONES = {
    "swin_tiny": dict(backbone="swin_tiny_patch4_window7_224", stage_norms=True),
    "swin_small": dict(backbone="swin_small_patch4_window7_224", stage_norms=True),
    "swin_base": dict(backbone="swin_base_patch4_window7_224", stage_norms=True),
    "resnet50": dict(backbone="resnet50", stage_norms=False),
    "resnet101": dict(backbone="resnet101", stage_norms=False),
}


def _register(size):
  def factory(**overrides):
    kw = dict(MASKFORMER_BACKBONES[size])
    kw.update(overrides)
    return MaskFormer(**kw)
  factory.__doc__ = f"MaskFormer with a {size} backbone (N=100, 6 decoder layers, 256 wide)."
  register_model(factory, name=f"maskformer_{size}")


for _size in MASKFORMER_BACKBONES:
  _register(_size)


@register_model
def maskformer_tiny(**overrides):
  """A small MaskFormer for CPU runs and tests: a 4-stage 32-wide Swin
  (window 4), 16 queries, 2 decoder layers, widths 64."""
  kw = dict(backbone="swin_tiny_patch4_window7_224",
            backbone_kwargs=dict(embed_dim=32, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8),
                                 window_size=4, drop_path_rate=0.0),
            num_queries=16, hidden_dim=64, fpn_dim=64, mask_dim=64, decoder_layers=2,
            num_heads=4, ffn_dim=128, dropout=0.0)
  kw.update(overrides)
  return MaskFormer(**kw)
