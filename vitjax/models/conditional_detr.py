"""Conditional DETR (Meng et al. 2021, "Conditional DETR for Fast Training
Convergence").

DETR's layout (ResNet C5 -> 1x1 projection -> post-norm transformer encoder with
sine position encodings added to queries and keys -> decoder over learned
object queries -> class + box heads), with the decoder's cross-attention
changed so that each query looks for its object's extremities near a reference
point (paper Sec. 3.3-3.4):

- a 2D reference point s per query, predicted from the query's positional
  embedding (`ref_point_head`, a 2-layer MLP + sigmoid);
- the conditional spatial query p_q = T(f) * PE(s): the sine embedding of s
  scaled element-wise by T, a 2-layer MLP (`query_scale`) of the decoder
  embedding f (T = 1 in the first layer);
- queries and keys made of a content and a spatial half, concatenated per head
  (not added): q = [W_c f, W_s p_q], k = [W_c x, W_p PE(x)], so the dot product
  is the content similarity plus the spatial similarity; in the first layer
  the query position (and key position) is also added to the content half,
  as in DETR;
- boxes relative to the reference point: sigmoid(MLP(f) + [logit(s), 0, 0]);
  class logits per class with sigmoid focal loss (no "no object" slot).

The decoder self-attention projects content and position separately and adds
them. Every decoder layer's output goes through the shared final LayerNorm
before the (shared) heads ('aux' holds the earlier layers' predictions).

`__call__(images, train=False)` returns `(logits [B, Q, C], out)` with 'boxes',
'aux', 'stem', 'stage_i', 'encoded' and 'pre_logits' (see deformable_detr.py).

Named sizes (paper Sec. 4.1, Table 1; 300 queries, 6+6 layers, width 256,
8 heads, FFN 2048, 91 COCO class slots as in HF):
  conditional_detr_resnet50   ResNet-50, published 44M params
  conditional_detr_tiny       a small test / CPU model
"""

from typing import Any, Mapping, Optional, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vitjax.errors import UserError
from vitjax.models.deformable_detr import inverse_sigmoid, sine_embed
from vitjax.models.detr import BoxHead, EncoderLayer, downsample_mask, masked_sine_posemb
from vitjax.models.features import create_backbone, select_levels
from vitjax.models.layers import Mlp, dot_product_attention, sine_posemb_2d
from vitjax.models.registry import register_model


class ConditionalCrossAttention(nn.Module):
  """Cross-attention with queries / keys = [content, spatial] per head (Sec. 3.4).

  x [B, Q, D] decoder embeddings, memory / memory_pos [B, S, D], query_sine
  [B, Q, D] (the conditional spatial query before projection), query_pos:
  the object query position, added to the content half in the first layer only
  (then `memory_pos` is added to the key content too).
  """
  num_heads: int
  first: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, memory, memory_pos, query_sine, query_pos=None, mask=None):
    d, h = x.shape[-1], self.num_heads
    dense = lambda name: nn.Dense(d, dtype=self.dtype, name=name)  # noqa: E731
    heads = lambda t: t.reshape(t.shape[:2] + (h, d // h))  # noqa: E731
    q = dense("q_content_proj")(x)
    k = dense("k_content_proj")(memory)
    v = dense("v_proj")(memory)
    k_pos = dense("k_pos_proj")(memory_pos)
    if self.first:
      q = q + dense("q_pos_proj")(query_pos)
      k = k + k_pos
    q = jnp.concatenate([heads(q), heads(dense("q_pos_sine_proj")(query_sine))], -1)
    k = jnp.concatenate([heads(k), heads(k_pos)], -1)
    out = dot_product_attention(q, k, heads(v), mask=mask)  # scale (2 D / H) ** -0.5
    return dense("o_proj")(out.reshape(out.shape[:2] + (d,)))


class ConditionalSelfAttention(nn.Module):
  """Decoder self-attention: q = W_qc x + W_qp pos, k = W_kc x + W_kp pos, v = W_v x."""
  num_heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, pos):
    d, h = x.shape[-1], self.num_heads
    dense = lambda name: nn.Dense(d, dtype=self.dtype, name=name)  # noqa: E731
    heads = lambda t: t.reshape(t.shape[:2] + (h, d // h))  # noqa: E731
    q = dense("q_content_proj")(x) + dense("q_pos_proj")(pos)
    k = dense("k_content_proj")(x) + dense("k_pos_proj")(pos)
    out = dot_product_attention(heads(q), heads(k), heads(dense("v_proj")(x)))
    return dense("o_proj")(out.reshape(out.shape[:2] + (d,)))


class DecoderLayer(nn.Module):
  """Post-norm: self-attention, conditional cross-attention, FFN."""
  num_heads: int
  ffn_dim: int
  first: bool = False
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, query_pos, query_sine, memory, memory_pos, deterministic: bool = True,
               mask=None):
    drop = nn.Dropout(self.dropout)
    ln = lambda name: nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name=name)  # noqa: E731
    y = ConditionalSelfAttention(self.num_heads, self.dtype, name="self_attn")(x, query_pos)
    x = ln("self_attn_layer_norm")(x + drop(y, deterministic=deterministic))
    y = ConditionalCrossAttention(self.num_heads, self.first, self.dtype, name="encoder_attn")(
        x, memory, memory_pos, query_sine, query_pos if self.first else None, mask)
    x = ln("encoder_attn_layer_norm")(x + drop(y, deterministic=deterministic))
    y = Mlp(self.ffn_dim, dropout=self.dropout, act=nn.relu, dtype=self.dtype, name="mlp")(
        x, deterministic)
    return ln("final_layer_norm")(x + y)


class ConditionalDETR(nn.Module):
  """Conditional DETR over NHWC images (see the module docstring).

  num_classes: sigmoid class logits per query.
  backbone: a registered backbone's name (its coarsest feature level, C5 for
    ResNet, feeds the encoder), or a dict of ResNet keyword arguments (the
    named models' and the HF converter's form; default ResNet-50).
  backbone_kwargs: overrides for the backbone.
  backbone_train_bn: update the backbone's BatchNorm statistics when training
    (False: frozen BatchNorm, as the paper and HF).
  """
  num_classes: int = 91
  backbone: Union[str, Mapping[str, Any], None] = None
  backbone_kwargs: Optional[Mapping[str, Any]] = None
  backbone_train_bn: bool = False
  hidden_dim: int = 256
  num_heads: int = 8
  encoder_layers: int = 6
  decoder_layers: int = 6
  ffn_dim: int = 2048
  num_queries: int = 300
  dropout: float = 0.1
  dtype: Any = jnp.float32

  def __post_init__(self):
    super().__post_init__()
    if self.hidden_dim % (2 * self.num_heads) or self.hidden_dim <= 0:
      raise UserError(f"ConditionalDETR hidden_dim={self.hidden_dim} must be a positive "
                      f"multiple of 2 * num_heads={2 * self.num_heads} (the sine embeddings "
                      "split it in halves, the heads split it evenly).")
    if self.decoder_layers < 1 or self.encoder_layers < 0:
      raise UserError("ConditionalDETR needs decoder_layers >= 1 and encoder_layers >= 0.")

  @nn.compact
  def __call__(self, images, *, train: bool = False, pixel_mask=None):
    """images [B, H, W, 3]; pixel_mask None or [B, H, W] (1 = image, 0 =
    padding): masked position encoding and key padding as DETR's."""
    d, det = self.hidden_dim, not train
    bb = create_backbone(self.backbone, self.backbone_kwargs, dtype=self.dtype).clone(
        parent=self, name="backbone")
    _, bb_out = bb(images, train=train and self.backbone_train_bn)
    levels = select_levels(bb)  # one map per stride, fine to coarse
    out = {lv.name: bb_out[lv.name] for lv in levels}
    if "stem" in bb_out:
      out["stem"] = bb_out["stem"]
    c5 = bb_out[levels[-1].name]
    b, h, w, _ = c5.shape
    src = nn.Conv(d, (1, 1), dtype=self.dtype, name="input_projection")(c5).reshape(b, h * w, d)
    if pixel_mask is None:
      pos, keys = jnp.broadcast_to(sine_posemb_2d(h, w, d)[None], (b, h * w, d)), None
    else:
      mask = downsample_mask(pixel_mask, h, w)
      pos, keys = masked_sine_posemb(mask, d), mask.reshape(b, 1, 1, h * w)
    pos = pos.astype(self.dtype)

    memory = nn.Dropout(self.dropout)(src, deterministic=det)
    for i in range(self.encoder_layers):
      memory = EncoderLayer(d, self.num_heads, self.ffn_dim, self.dropout, self.dtype,
                            name=f"encoder_{i}")(memory, pos, det, keys)
    out["encoded"] = memory

    query_pos = self.param("query_embed", nn.initializers.normal(1.0), (self.num_queries, d))
    query_pos = jnp.broadcast_to(query_pos[None], (b, self.num_queries, d)).astype(self.dtype)
    reference = jax.nn.sigmoid(Mlp(d, 2, act=nn.relu, dtype=self.dtype,
                                   name="ref_point_head")(query_pos))
    # PE(s): the sine embedding of the reference point, (y, x) halves.
    sine = sine_embed(reference[..., ::-1] * 2 * np.pi, d // 2).astype(self.dtype)
    query_scale = Mlp(d, d, act=nn.relu, dtype=self.dtype, name="query_scale")
    norm = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="decoder_norm")
    x, states = jnp.zeros_like(query_pos), []
    for i in range(self.decoder_layers):
      query_sine = sine if i == 0 else sine * query_scale(x)
      x = DecoderLayer(self.num_heads, self.ffn_dim, i == 0, self.dropout, self.dtype,
                       name=f"decoder_{i}")(x, query_pos, query_sine, memory, pos, det, keys)
      states.append(norm(x))

    class_head = nn.Dense(self.num_classes, dtype=self.dtype,
                          bias_init=nn.initializers.constant(-np.log((1 - 0.01) / 0.01)),
                          name="class_embed")
    box_head = BoxHead(d, 3, self.dtype, name="bbox_embed")
    ref_logit = inverse_sigmoid(reference)
    preds = []
    for s in states:
      delta = box_head(s)
      coords = jnp.concatenate([delta[..., :2] + ref_logit, delta[..., 2:]], -1)
      preds.append({"logits": class_head(s).astype(jnp.float32),
                    "boxes": jax.nn.sigmoid(coords).astype(jnp.float32)})
    out["aux"] = preds[:-1]
    out["boxes"] = preds[-1]["boxes"]
    out["pre_logits"] = states[-1]
    out["logits"] = preds[-1]["logits"]
    return preds[-1]["logits"], out


@register_model
def conditional_detr_resnet50(**overrides):
  """Conditional DETR, ResNet-50 (paper Table 1: 44M params)."""
  kw = dict(num_classes=91, backbone=dict(depth=50), hidden_dim=256, num_heads=8,
            encoder_layers=6, decoder_layers=6, ffn_dim=2048, num_queries=300)
  kw.update(overrides)
  return ConditionalDETR(**kw)


@register_model
def conditional_detr_tiny(**overrides):
  """A small Conditional DETR (ResNet with one basic block per stage, width 32,
  one encoder and two decoder layers): tests and CPU experiments."""
  kw = dict(num_classes=3, backbone=dict(block="basic", stage_depths=(1, 1, 1, 1),
                                         stage_widths=(16, 32, 64, 64), stem_width=16),
            hidden_dim=32, num_heads=2, encoder_layers=1, decoder_layers=2, ffn_dim=64,
            num_queries=10, dropout=0.0)
  kw.update(overrides)
  return ConditionalDETR(**kw)
