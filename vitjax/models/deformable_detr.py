"""Deformable DETR (Zhu et al. 2021, "Deformable DETR: Deformable Transformers
for End-to-End Object Detection").

image -> ResNet C3, C4, C5 (strides 8, 16, 32) + one extra level (3x3/2 conv on
C5, stride 64) -> each level projected to `hidden_dim` (1x1 conv + GroupNorm(32))
-> flattened and concatenated, with sine position encodings plus a learned
embedding per level -> encoder of multi-scale deformable self-attention (each
pixel is a query whose reference point is its own centre) -> decoder: object
queries (learned, split into a content part and a positional part), with
self-attention among them and deformable cross-attention into the encoder
output around a reference point each (a 2D point predicted from the query
position) -> per decoder layer a linear class head (sigmoid logits, focal loss)
and a 3-layer box MLP predicting (cx, cy, w, h) relative to the reference point
(in inverse-sigmoid space).

Options (paper Sec. 4.2, HF config flags of the same names):
- `with_box_refine` (iterative bounding box refinement): every decoder layer
  has its own heads and refines the boxes of the previous layer; the refined
  box (4D) becomes the next layer's reference (gradient stopped).
- `two_stage`: the encoder output itself predicts a class score and a box per
  pixel (relative to a proposal box centred there, of size 0.05 * 2**level);
  the top `num_queries` become the decoder's reference boxes and (through a
  sine embedding of the box) its queries. Needs `with_box_refine`, as in the
  reference code's released models and in HF.

The deformable attention is `vitjax.models.layers.deformable_attention`.
Padded batches take HF's `pixel_mask` (see `DeformableDETR.__call__`); without
one every position is image.

`__call__(images, train=False)` returns `(logits [B, Q, C], out)`: `out` holds
'boxes' [B, Q, 4] (cx, cy, w, h in [0, 1]), 'aux' (per earlier decoder layer
{'logits', 'boxes'}), 'enc_outputs' ({'logits', 'boxes'} of the encoder's
proposals, two-stage only), 'stem', 'stage_i' (backbone maps), 'encoded'
(encoder output [B, S, D]) and 'pre_logits' (last decoder output [B, Q, D]).

Named sizes (paper Table 1 / Sec. 5; 300 queries, 6+6 layers, width 256,
8 heads, FFN 1024, L=4 levels, K=4 points; 91 COCO class slots as in HF):
  deformable_detr_resnet50              ResNet-50, published 40M params
  deformable_detr_resnet50_box_refine   + iterative box refinement
  deformable_detr_resnet50_two_stage    + box refinement + two-stage
  deformable_detr_tiny                  a small test / CPU model
"""

from typing import Any, Mapping, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vitjax.errors import UserError
from vitjax.models.detr import BoxHead, DetrAttention, downsample_mask, masked_sine_posemb
from vitjax.models.features import create_backbone, select_levels
from vitjax.models.layers import Mlp, sine_posemb_2d
from vitjax.models.layers.deformable_attention import MSDeformableAttention
from vitjax.models.registry import register_model


def inverse_sigmoid(x, eps: float = 1e-5):
  """log(x / (1 - x)), with x clamped to [eps, 1 - eps] (as the reference code)."""
  x = jnp.clip(x, 0.0, 1.0)
  return jnp.log(jnp.maximum(x, eps) / jnp.maximum(1.0 - x, eps))


def sine_embed(coords, num_feats: int, temperature: float = 10_000.0):
  """[..., n] coordinates -> [..., n * num_feats]: for each coordinate,
  sin / cos interleaved at frequencies temperature**(-2i / num_feats)."""
  dim_t = temperature ** (2 * (np.arange(num_feats) // 2) / num_feats)
  pos = coords[..., None] / jnp.asarray(dim_t, jnp.float32)
  pos = jnp.stack([jnp.sin(pos[..., 0::2]), jnp.cos(pos[..., 1::2])], -1)
  return pos.reshape(pos.shape[:-3] + (-1,))


class EncoderLayer(nn.Module):
  """Post-norm: x = LN(x + MSDeformAttn(x + pos, x)); x = LN(x + FFN(x))."""
  num_heads: int
  num_levels: int
  num_points: int
  ffn_dim: int
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, pos, ref, shapes, deterministic: bool = True, value_mask=None):
    drop = nn.Dropout(self.dropout)
    y = MSDeformableAttention(self.num_heads, self.num_levels, self.num_points,
                              dtype=self.dtype, name="self_attn")(x + pos, x, ref, shapes,
                                                                  value_mask)
    x = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="self_attn_layer_norm")(
        x + drop(y, deterministic=deterministic))
    y = Mlp(self.ffn_dim, dropout=self.dropout, act=nn.relu, dtype=self.dtype, name="mlp")(
        x, deterministic)
    return nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="final_layer_norm")(x + y)


class DecoderLayer(nn.Module):
  """Post-norm: self-attention among queries (q = k = x + pos), deformable
  cross-attention into the encoder output around the reference points, FFN."""
  num_heads: int
  num_levels: int
  num_points: int
  ffn_dim: int
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, pos, memory, ref, shapes, deterministic: bool = True,
               value_mask=None):
    drop = nn.Dropout(self.dropout)
    ln = lambda name: nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name=name)  # noqa: E731
    d = x.shape[-1]
    y = DetrAttention(d, self.num_heads, dtype=self.dtype, name="self_attn")(
        x + pos, x + pos, x, deterministic)
    x = ln("self_attn_layer_norm")(x + drop(y, deterministic=deterministic))
    y = MSDeformableAttention(self.num_heads, self.num_levels, self.num_points,
                              dtype=self.dtype, name="encoder_attn")(x + pos, memory, ref, shapes,
                                                                     value_mask)
    x = ln("encoder_attn_layer_norm")(x + drop(y, deterministic=deterministic))
    y = Mlp(self.ffn_dim, dropout=self.dropout, act=nn.relu, dtype=self.dtype, name="mlp")(
        x, deterministic)
    return ln("final_layer_norm")(x + y)


def encoder_reference_points(shapes: Sequence[Tuple[int, int]]):
  """Pixel centres of every level, normalised to [0, 1]: [S, 2] as (x, y)."""
  pts = []
  for h, w in shapes:
    yy, xx = np.meshgrid((np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w, indexing="ij")
    pts.append(np.stack([xx.reshape(-1), yy.reshape(-1)], -1))
  return jnp.asarray(np.concatenate(pts, 0), jnp.float32)


def encoder_proposals(shapes: Sequence[Tuple[int, int]]):
  """Two-stage proposal boxes, one per pixel (centre, size 0.05 * 2**level),
  in inverse-sigmoid space: ([S, 4] logits, [S] valid: inside (0.01, 0.99))."""
  boxes = []
  for lvl, (h, w) in enumerate(shapes):
    yy, xx = np.meshgrid((np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w, indexing="ij")
    wh = np.full((h * w, 2), 0.05 * 2.0 ** lvl)
    boxes.append(np.concatenate([xx.reshape(-1, 1), yy.reshape(-1, 1), wh], -1))
  boxes = np.concatenate(boxes, 0)
  valid = np.all((boxes > 0.01) & (boxes < 0.99), -1)
  with np.errstate(divide="ignore"):
    logits = np.where(valid[:, None], np.log(boxes / (1 - boxes)), np.inf)
  return jnp.asarray(logits, jnp.float32), jnp.asarray(valid)


def valid_ratios(masks):
  """Per level the image's share of the padded map: [B, L, 2] (width, height),
  counted along the first column / row of each [B, h, w] mask (as HF)."""
  return jnp.stack([jnp.stack([m[:, 0, :].sum(1) / m.shape[2], m[:, :, 0].sum(1) / m.shape[1]],
                              -1).astype(jnp.float32) for m in masks], 1)


def masked_encoder_reference_points(shapes, ratios):
  """Encoder reference points of a padded batch: [B, S, L, 2] (HF's
  `get_reference_points`): pixel centres over each image's valid extent,
  then scaled by every level's valid ratio."""
  pts = []
  for lvl, (h, w) in enumerate(shapes):
    yy, xx = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
    ry = jnp.asarray(yy.reshape(-1), jnp.float32)[None] / (ratios[:, None, lvl, 1] * h)
    rx = jnp.asarray(xx.reshape(-1), jnp.float32)[None] / (ratios[:, None, lvl, 0] * w)
    pts.append(jnp.stack([rx, ry], -1))
  return jnp.concatenate(pts, 1)[:, :, None] * ratios[:, None]


def masked_encoder_proposals(masks):
  """Two-stage proposals of a padded batch (HF's `gen_encoder_output_proposals`):
  ([B, S, 4] logits, inf where invalid; [B, S] valid: an image position whose
  box lies inside (0.01, 0.99) of that image's extent)."""
  boxes, inside = [], []
  for lvl, m in enumerate(masks):
    b, h, w = m.shape
    vh = m[:, :, 0].sum(1).astype(jnp.float32)
    vw = m[:, 0, :].sum(1).astype(jnp.float32)
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32),
                         indexing="ij")
    cx = (jnp.asarray(xx)[None] + 0.5) / vw[:, None, None]
    cy = (jnp.asarray(yy)[None] + 0.5) / vh[:, None, None]
    wh = jnp.full((b, h, w), 0.05 * 2.0 ** lvl, jnp.float32)
    boxes.append(jnp.stack([cx, cy, wh, wh], -1).reshape(b, h * w, 4))
    inside.append(m.reshape(b, h * w))
  boxes, inside = jnp.concatenate(boxes, 1), jnp.concatenate(inside, 1)
  valid = inside & jnp.all((boxes > 0.01) & (boxes < 0.99), -1)
  safe = jnp.where(valid[..., None], boxes, 0.5)
  return jnp.where(valid[..., None], jnp.log(safe / (1 - safe)), jnp.inf), valid


class DeformableDETR(nn.Module):
  """Deformable DETR over NHWC images (see the module docstring).

  num_classes: class logits per query (sigmoid; no "no object" slot).
  backbone: a registered backbone's name, or a dict of ResNet keyword
    arguments (the named models' and the HF converter's form; default
    ResNet-50); its coarsest min(3, num_feature_levels) strides feed the
    encoder (vitjax/models/features.py's select_levels).
  backbone_kwargs: overrides for the backbone.
  backbone_train_bn: update the backbone's BatchNorm statistics when training
    (False: frozen BatchNorm, as the paper and HF).
  hidden_dim / num_heads / encoder_layers / decoder_layers / ffn_dim: the
    transformer; hidden_dim must be a multiple of 32 (GroupNorm(32)).
  num_feature_levels (L), encoder_points / decoder_points (K): deformable
    attention's levels and points per head and level.
  share_heads: one class / box head for every decoder layer (the paper
    without refinement); False gives every layer its own (HF's layout).
  """
  num_classes: int = 91
  backbone: Union[str, Mapping[str, Any], None] = None
  backbone_kwargs: Optional[Mapping[str, Any]] = None
  backbone_train_bn: bool = False
  hidden_dim: int = 256
  num_heads: int = 8
  encoder_layers: int = 6
  decoder_layers: int = 6
  ffn_dim: int = 1024
  num_queries: int = 300
  num_feature_levels: int = 4
  encoder_points: int = 4
  decoder_points: int = 4
  with_box_refine: bool = False
  two_stage: bool = False
  share_heads: bool = True
  dropout: float = 0.1
  dtype: Any = jnp.float32

  def __post_init__(self):
    super().__post_init__()
    if self.hidden_dim % 32 or self.hidden_dim <= 0:
      raise UserError(f"DeformableDETR hidden_dim={self.hidden_dim} must be a positive "
                      f"multiple of 32 (GroupNorm(32) input projections); e.g. "
                      f"{max(32, self.hidden_dim // 32 * 32)} or {self.hidden_dim // 32 * 32 + 32}.")
    if self.hidden_dim % self.num_heads:
      raise UserError(f"DeformableDETR hidden_dim={self.hidden_dim} is not divisible by "
                      f"num_heads={self.num_heads}.")
    if self.two_stage and not self.with_box_refine:
      raise UserError("DeformableDETR two_stage=True needs with_box_refine=True (as the "
                      "released models and HF); set both.")
    if self.num_feature_levels < 1 or self.decoder_layers < 1 or self.encoder_layers < 0:
      raise UserError("DeformableDETR needs num_feature_levels >= 1, decoder_layers >= 1 "
                      "and encoder_layers >= 0.")

  def _heads(self):
    """Number of (class, box) head pairs: one per decoder layer unless shared,
    plus one for the encoder's proposals (two-stage)."""
    n = 1 if (self.share_heads and not self.with_box_refine) else self.decoder_layers
    return n + (1 if self.two_stage else 0)

  @nn.compact
  def __call__(self, images, *, train: bool = False, pixel_mask=None):
    """images [B, H, W, 3]; pixel_mask None or [B, H, W] (1 = image, 0 =
    padding; HF's semantics: masked position encodings, valid ratios scaling
    the reference points, padded values zeroed in every deformable attention,
    two-stage proposals over each image's extent)."""
    d, det = self.hidden_dim, not train
    out = {}
    bb = create_backbone(self.backbone, self.backbone_kwargs, multi_scale=True,  # ViT: pyramid
                         dtype=self.dtype).clone(parent=self, name="backbone")
    _, bb_out = bb(images, train=train and self.backbone_train_bn)
    levels = select_levels(bb)  # one map per stride, fine to coarse
    out.update({lv.name: bb_out[lv.name] for lv in levels})
    if "stem" in bb_out:
      out["stem"] = bb_out["stem"]
    n_bb = min(3, self.num_feature_levels, len(levels))
    feats = [bb_out[lv.name] for lv in levels[-n_bb:]]

    # Input projections (+ extra stride-2 levels), GroupNorm(32).
    gn = lambda name: nn.GroupNorm(num_groups=32, epsilon=1e-5, dtype=self.dtype, name=name)  # noqa: E731
    srcs = []
    for i, f in enumerate(feats):
      srcs.append(gn(f"input_proj_{i}_norm")(
          nn.Conv(d, (1, 1), dtype=self.dtype, name=f"input_proj_{i}_conv")(f)))
    x = feats[-1]
    for i in range(n_bb, self.num_feature_levels):
      x = gn(f"input_proj_{i}_norm")(nn.Conv(d, (3, 3), (2, 2), padding=((1, 1), (1, 1)),
                                             dtype=self.dtype, name=f"input_proj_{i}_conv")(x))
      srcs.append(x)
    shapes = tuple((s.shape[1], s.shape[2]) for s in srcs)
    b = images.shape[0]
    level_embed = self.param("level_embed", nn.initializers.normal(1.0),
                             (self.num_feature_levels, d))
    src = jnp.concatenate([s.reshape(b, -1, d) for s in srcs], 1)
    if pixel_mask is None:
      masks = value_mask = ratios = None
      pos = jnp.concatenate([sine_posemb_2d(h, w, d, offset=0.5) + level_embed[i]
                             for i, (h, w) in enumerate(shapes)], 0)[None].astype(self.dtype)
      ref = jnp.broadcast_to(encoder_reference_points(shapes)[None, :, None],
                             (b, src.shape[1], len(shapes), 2))
    else:
      masks = [downsample_mask(pixel_mask, h, w) for h, w in shapes]
      value_mask = jnp.concatenate([m.reshape(b, -1) for m in masks], 1)
      ratios = valid_ratios(masks)
      pos = jnp.concatenate([masked_sine_posemb(m, d, offset=0.5) + level_embed[i]
                             for i, m in enumerate(masks)], 1).astype(self.dtype)
      ref = masked_encoder_reference_points(shapes, ratios)

    # Encoder.
    memory = nn.Dropout(self.dropout)(src, deterministic=det)
    for i in range(self.encoder_layers):
      memory = EncoderLayer(self.num_heads, self.num_feature_levels, self.encoder_points,
                            self.ffn_dim, self.dropout, self.dtype,
                            name=f"encoder_{i}")(memory, pos, ref, shapes, det, value_mask)
    out["encoded"] = memory

    n_heads = self._heads()
    class_heads = [nn.Dense(self.num_classes, dtype=self.dtype,
                            bias_init=nn.initializers.constant(-np.log((1 - 0.01) / 0.01)),
                            name=f"class_embed_{i}") for i in range(n_heads)]
    box_heads = [BoxHead(d, 3, self.dtype, name=f"bbox_embed_{i}") for i in range(n_heads)]
    head = lambda i: min(i, n_heads - 1 - (1 if self.two_stage else 0))  # noqa: E731

    # Queries and reference points.
    if self.two_stage:
      if masks is None:
        proposals, valid = encoder_proposals(shapes)
        proposals, valid = proposals[None], valid[None]
      else:
        proposals, valid = masked_encoder_proposals(masks)
      oq = jnp.where(valid[..., None], memory, 0.0)
      oq = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="enc_output_norm")(
          nn.Dense(d, dtype=self.dtype, name="enc_output")(oq))
      enc_logits = class_heads[-1](oq)
      enc_coords = box_heads[-1](oq) + proposals
      out["enc_outputs"] = {"logits": enc_logits.astype(jnp.float32),
                            "boxes": jax.nn.sigmoid(enc_coords).astype(jnp.float32)}
      k = min(self.num_queries, enc_logits.shape[1])
      _, top = jax.lax.top_k(enc_logits[..., 0], k)
      top_coords = jax.lax.stop_gradient(jnp.take_along_axis(enc_coords, top[..., None], 1))
      reference = jax.nn.sigmoid(top_coords)
      emb = sine_embed(jax.nn.sigmoid(top_coords) * 2 * np.pi, d // 2).astype(self.dtype)
      emb = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="pos_trans_norm")(
          nn.Dense(2 * d, dtype=self.dtype, name="pos_trans")(emb))
      query_pos, tgt = emb[..., :d], emb[..., d:]
    else:
      queries = self.param("query_embed", nn.initializers.normal(1.0),
                           (self.num_queries, 2 * d))
      query_pos = jnp.broadcast_to(queries[None, :, :d], (b, self.num_queries, d))
      tgt = jnp.broadcast_to(queries[None, :, d:], (b, self.num_queries, d))
      reference = jax.nn.sigmoid(nn.Dense(2, dtype=self.dtype, name="reference_points")(query_pos))

    # Decoder, with per-layer predictions.
    hs, refs_in = tgt.astype(self.dtype), []
    states = []
    for i in range(self.decoder_layers):
      refs_in.append(reference)
      if ratios is None:
        level_ref = jnp.broadcast_to(reference[:, :, None], reference.shape[:2] +
                                     (len(shapes),) + reference.shape[-1:])
      else:  # each level's reference scaled to the image's share of the map
        scale = ratios if reference.shape[-1] == 2 else jnp.concatenate([ratios, ratios], -1)
        level_ref = reference[:, :, None] * scale[:, None]
      hs = DecoderLayer(self.num_heads, self.num_feature_levels, self.decoder_points,
                        self.ffn_dim, self.dropout, self.dtype, name=f"decoder_{i}")(
                            hs, query_pos, memory, level_ref, shapes, det, value_mask)
      states.append(hs)
      if self.with_box_refine:
        delta = box_heads[i](hs)
        if reference.shape[-1] == 4:
          new = delta + inverse_sigmoid(reference)
        else:
          new = jnp.concatenate([delta[..., :2] + inverse_sigmoid(reference), delta[..., 2:]], -1)
        reference = jax.lax.stop_gradient(jax.nn.sigmoid(new))
    preds = []
    for i, (h, r) in enumerate(zip(states, refs_in)):
      logits = class_heads[head(i)](h)
      delta = box_heads[head(i)](h)
      r = inverse_sigmoid(r)
      if r.shape[-1] == 4:
        coords = delta + r
      else:
        coords = jnp.concatenate([delta[..., :2] + r, delta[..., 2:]], -1)
      preds.append({"logits": logits.astype(jnp.float32),
                    "boxes": jax.nn.sigmoid(coords).astype(jnp.float32)})
    out["aux"] = preds[:-1]
    out["boxes"] = preds[-1]["boxes"]
    out["pre_logits"] = states[-1]
    out["logits"] = preds[-1]["logits"]
    return preds[-1]["logits"], out


# Paper Sec. 5 ("Implementation details") / HF SenseTime/deformable-detr configs.
_RESNET50 = dict(num_classes=91, backbone=dict(depth=50), hidden_dim=256, num_heads=8,
                 encoder_layers=6, decoder_layers=6, ffn_dim=1024, num_queries=300,
                 num_feature_levels=4, encoder_points=4, decoder_points=4)


def _factory(name, doc, **fixed):
  def factory(**overrides):
    kw = dict(_RESNET50)
    kw.update(fixed)
    kw.update(overrides)
    return DeformableDETR(**kw)
  factory.__doc__ = doc
  register_model(factory, name=name)


_factory("deformable_detr_resnet50", "Deformable DETR, ResNet-50 (paper Table 1: 40M params).")
_factory("deformable_detr_resnet50_box_refine",
         "Deformable DETR + iterative bounding box refinement, ResNet-50.",
         with_box_refine=True)
_factory("deformable_detr_resnet50_two_stage",
         "Two-stage Deformable DETR + iterative box refinement, ResNet-50.",
         with_box_refine=True, two_stage=True)


@register_model
def deformable_detr_tiny(**overrides):
  """A small Deformable DETR (ResNet with one basic block per stage, width 32,
  one encoder and two decoder layers, 3 levels): tests and CPU experiments."""
  kw = dict(num_classes=3, backbone=dict(block="basic", stage_depths=(1, 1, 1, 1),
                                         stage_widths=(16, 32, 64, 64), stem_width=16),
            hidden_dim=32, num_heads=2, encoder_layers=1, decoder_layers=2, ffn_dim=64,
            num_queries=10, num_feature_levels=3, encoder_points=2, decoder_points=2,
            dropout=0.0)
  kw.update(overrides)
  return DeformableDETR(**kw)
