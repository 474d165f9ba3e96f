"""DETR: End-to-End Object Detection with Transformers (Carion et al., ECCV 2020).

  images -> backbone (ResNet C5, or any registered backbone's coarsest feature
            level, vitjax/models/features.py)
         -> 1x1 input projection to d_model
         -> transformer encoder (post-norm; the fixed sine position encoding
            of the map is added to queries and keys at every layer)
         -> transformer decoder over `num_queries` learned object queries
            (zero content; the query embedding is added to queries and keys of
            the self-attention and to the queries of the cross-attention at
            every layer; the encoder's position encoding to its keys)
         -> one LayerNorm shared by every decoder layer's output
         -> class head (C + 1, the last is "no object") and a 3-layer MLP box
            head (cx, cy, w, h, sigmoid), shared by all layers (auxiliary
            outputs of the intermediate layers, Sec. 3.2).

Returns (logits [B, Q, C + 1], out) with out['boxes'] [B, Q, 4] and
out['aux'] = [{'logits', 'boxes'}] of the first L - 1 decoder layers (empty
without `aux_loss`), plus 'stem' and the backbone's feature levels (e.g. 'stage_i'), 'encoded' (the
encoder memory [B, HW, D]) and 'pre_logits' (normed decoder output [B, Q, D]).
The interface of vitjax.tasks.detection.

Named sizes (paper Table 1; 91 COCO class ids as the released checkpoints):
  detr_resnet50   ResNet-50,  d 256, 8 heads, 6 + 6 layers, FFN 2048, 100 queries: 41M
  detr_resnet101  ResNet-101, same transformer: 60M
  detr_tiny       a small basic-block ResNet, d 64, 2 + 2 layers (tests, shapes set).

The backbone's BatchNorm is frozen (running statistics, as the paper and HF)
unless `backbone_train_bn` (from-scratch training on small data).
"""

from typing import Any, Mapping, Optional, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vitjax.errors import UserError
from vitjax.models.features import create_backbone, select_levels
from vitjax.models.layers import Mlp, dot_product_attention, sine_posemb_2d
from vitjax.models.registry import register_model


def downsample_mask(pixel_mask, h: int, w: int):
  """A [B, H, W] pixel mask (True / 1 = image, 0 = padding) at an h x w feature map.

  Nearest neighbour as torch's `F.interpolate(mask, size=(h, w))` (what HF's
  and the reference DETR's backbones do): output row i reads input row
  min(floor(i * (H / h)), H - 1), the product taken in float32.
  """
  big_h, big_w = pixel_mask.shape[1:3]

  def index(n_in, n_out):
    if n_out == n_in:
      return np.arange(n_in)
    if n_out == 2 * n_in:
      return np.arange(n_out) >> 1
    scale = np.float32(n_in) / np.float32(n_out)
    return np.minimum(np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64),
                      n_in - 1)

  m = jnp.asarray(pixel_mask).astype(bool)
  return m[:, index(big_h, h)][:, :, index(big_w, w)]


def masked_sine_posemb(mask, dim: int, offset: float = 0.0, temperature: float = 10_000.0):
  """DETR's sine encoding of a padded batch: [B, h, w] mask -> [B, h * w, dim].

  HF's / the reference's `PositionEmbeddingSine` with normalize=True: row and
  column indices are the cumulative sums of the mask (so every image is
  encoded over its own extent), minus `offset` (Deformable DETR: 0.5), divided
  by the last cumulative sum of the row / column + 1e-6, times 2 pi; y half
  first, sin / cos interleaved. An all-True mask gives `sine_posemb_2d`.
  """
  if dim % 4:
    raise ValueError(f"sine 2D position encoding needs dim % 4 == 0, got {dim}")
  b, h, w = mask.shape
  m = mask.astype(jnp.float32)
  y, x = jnp.cumsum(m, 1), jnp.cumsum(m, 2)
  y = (y - offset) / (y[:, -1:, :] + 1e-6) * (2 * np.pi)
  x = (x - offset) / (x[:, :, -1:] + 1e-6) * (2 * np.pi)
  n = dim // 2
  freq = jnp.asarray(temperature ** (2 * (np.arange(n) // 2) / n), jnp.float32)

  def encode(t):
    a = t[..., None] / freq
    return jnp.stack([jnp.sin(a[..., 0::2]), jnp.cos(a[..., 1::2])], -1).reshape(b, h, w, n)
  return jnp.concatenate([encode(y), encode(x)], -1).reshape(b, h * w, dim)


class DetrAttention(nn.Module):
  """Multi-head attention with separate q / k / v / out projections
  (position encodings are added to the q / k inputs by the caller)."""
  dim: int
  num_heads: int
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, q, k, v, deterministic: bool = True, mask=None):
    """mask: None, or True where a key may be attended ([B, 1, 1, Nk]: key padding)."""
    h, d = self.num_heads, self.dim // self.num_heads
    proj = lambda name, x: nn.Dense(self.dim, dtype=self.dtype, name=name)(x).reshape(
        x.shape[:2] + (h, d))
    drop = (None if deterministic or not self.dropout else
            lambda w: nn.Dropout(self.dropout)(w, deterministic=False))
    o = dot_product_attention(proj("q_proj", q), proj("k_proj", k), proj("v_proj", v),
                              mask=mask, dropout_fn=drop)
    return nn.Dense(self.dim, dtype=self.dtype, name="o_proj")(o.reshape(q.shape[:2] + (-1,)))


class EncoderLayer(nn.Module):
  """Post-norm self-attention + FFN, position added to q and k."""
  dim: int
  num_heads: int
  ffn_dim: int
  dropout: float = 0.1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, pos, deterministic: bool = True, mask=None):
    qk = x + pos
    y = DetrAttention(self.dim, self.num_heads, self.dropout, self.dtype,
                      name="self_attn")(qk, qk, x, deterministic, mask)
    x = x + nn.Dropout(self.dropout)(y, deterministic=deterministic)
    x = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="self_attn_layer_norm")(x)
    y = Mlp(self.ffn_dim, dropout=self.dropout, act=nn.relu, dtype=self.dtype, name="mlp")(
        x, deterministic)
    return nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="final_layer_norm")(x + y)


class DecoderLayer(nn.Module):
  """Post-norm self-attention, cross-attention to the memory, FFN."""
  dim: int
  num_heads: int
  ffn_dim: int
  dropout: float = 0.1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, query_pos, memory, pos, deterministic: bool = True, mask=None):
    ln = lambda name: nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name=name)
    drop = lambda y: nn.Dropout(self.dropout)(y, deterministic=deterministic)
    qk = x + query_pos
    y = DetrAttention(self.dim, self.num_heads, self.dropout, self.dtype,
                      name="self_attn")(qk, qk, x, deterministic)
    x = ln("self_attn_layer_norm")(x + drop(y))
    y = DetrAttention(self.dim, self.num_heads, self.dropout, self.dtype,
                      name="encoder_attn")(x + query_pos, memory + pos, memory, deterministic,
                                           mask)
    x = ln("encoder_attn_layer_norm")(x + drop(y))
    y = Mlp(self.ffn_dim, dropout=self.dropout, act=nn.relu, dtype=self.dtype, name="mlp")(
        x, deterministic)
    return ln("final_layer_norm")(x + y)


class BoxHead(nn.Module):
  """`num_layers` Dense layers with ReLU between; the last gives 4 box numbers."""
  dim: int
  num_layers: int = 3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    for i in range(self.num_layers):
      x = nn.Dense(4 if i == self.num_layers - 1 else self.dim, dtype=self.dtype,
                   name=f"layers_{i}")(x)
      x = nn.relu(x) if i < self.num_layers - 1 else x
    return x


class DETR(nn.Module):
  """DETR detector (see the module docstring).

  num_classes: object classes C (the class head has C + 1 outputs).
  backbone: a registered backbone's name (its coarsest feature level feeds
    the encoder), or a dict of ResNet keyword arguments (the named models'
    and the HF converter's form; default ResNet-50).
  backbone_kwargs: overrides for the backbone (e.g. depths, drop_path_rate).
  backbone_train_bn: update the backbone's BatchNorm statistics in training.
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
  num_queries: int = 100
  dropout: float = 0.1
  aux_loss: bool = True
  dtype: Any = jnp.float32

  def __post_init__(self):
    super().__post_init__()
    if self.hidden_dim % self.num_heads or self.hidden_dim % 4:
      raise UserError(f"DETR hidden_dim={self.hidden_dim} must be a multiple of num_heads="
                      f"{self.num_heads} and of 4 (the sine encoding), e.g. "
                      f"{self.hidden_dim - self.hidden_dim % (4 * self.num_heads) or 4 * self.num_heads}.")
    if self.num_queries < 1 or self.decoder_layers < 1 or self.encoder_layers < 0:
      raise UserError(f"DETR needs num_queries >= 1 and decoder_layers >= 1 (got "
                      f"{self.num_queries}, {self.decoder_layers}).")

  @nn.compact
  def __call__(self, images, *, train: bool = False, pixel_mask=None):
    """images [B, H, W, 3]; pixel_mask None (every pixel is image) or [B, H, W]
    (1 = image, 0 = padding; HF's `pixel_mask`): the position encoding and
    the encoder / cross-attention keys then follow each image's own extent."""
    det = not train
    fixed = {} if self.backbone is None or isinstance(self.backbone, Mapping) else dict(
        dtype=self.dtype)  # the ResNet form keeps float32, as before
    bb = create_backbone(self.backbone, self.backbone_kwargs, **fixed).clone(
        parent=self, name="backbone")
    _, bb_out = bb(images, train=train and self.backbone_train_bn)
    levels = select_levels(bb)
    out = {lv.name: bb_out[lv.name] for lv in levels}
    if "stem" in bb_out:
      out["stem"] = bb_out["stem"]
    fmap = out[levels[-1].name]
    b, h, w, _ = fmap.shape
    d = self.hidden_dim
    x = nn.Conv(d, (1, 1), dtype=self.dtype, name="input_projection")(fmap).reshape(b, h * w, d)
    if pixel_mask is None:
      pos, keys = sine_posemb_2d(h, w, d)[None].astype(self.dtype), None
    else:
      mask = downsample_mask(pixel_mask, h, w)
      pos = masked_sine_posemb(mask, d).astype(self.dtype)
      keys = mask.reshape(b, 1, 1, h * w)
    for i in range(self.encoder_layers):
      x = EncoderLayer(d, self.num_heads, self.ffn_dim, self.dropout, self.dtype,
                       name=f"encoder_{i}")(x, pos, det, keys)
    out["encoded"] = x
    query_pos = self.param("query_position_embeddings", nn.initializers.normal(1.0),
                           (self.num_queries, d))
    query_pos = jnp.broadcast_to(query_pos.astype(self.dtype)[None], (b, self.num_queries, d))
    tgt = jnp.zeros_like(query_pos)
    norm = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="decoder_layernorm")
    cls_head = nn.Dense(self.num_classes + 1, dtype=self.dtype, name="class_labels_classifier")
    box_head = BoxHead(d, 3, self.dtype, name="bbox_predictor")
    predictions = []
    for i in range(self.decoder_layers):
      tgt = DecoderLayer(d, self.num_heads, self.ffn_dim, self.dropout, self.dtype,
                         name=f"decoder_{i}")(tgt, query_pos, x, pos, det, keys)
      if self.aux_loss or i == self.decoder_layers - 1:
        hs = norm(tgt)
        predictions.append((hs, cls_head(hs).astype(jnp.float32),
                            jax.nn.sigmoid(box_head(hs).astype(jnp.float32))))
    hs, logits, boxes = predictions[-1]
    out["pre_logits"] = hs
    out["boxes"] = boxes
    out["aux"] = [{"logits": lg, "boxes": bx} for _, lg, bx in predictions[:-1]]
    return logits, out


# Paper Table 1 (COCO; 91 class ids as in the released checkpoints).
_BASE = dict(num_classes=91, hidden_dim=256, num_heads=8, encoder_layers=6, decoder_layers=6,
             ffn_dim=2048, num_queries=100, dropout=0.1)


def _make(base, backbone):
  def factory(**overrides):
    kw = dict(base, backbone=backbone)
    kw.update(overrides)
    return DETR(**kw)
  return factory


register_model(_make(_BASE, dict(depth=50)), name="detr_resnet50")
register_model(_make(_BASE, dict(depth=101)), name="detr_resnet101")
register_model(_make(dict(num_classes=3, hidden_dim=64, num_heads=4, encoder_layers=2,
                          decoder_layers=2, ffn_dim=128, num_queries=20, dropout=0.0),
                     dict(block="basic", stage_depths=(1, 1, 1), stage_widths=(32, 64, 128),
                          stem_width=32, small_stem=False)),
               name="detr_tiny")
