"""Pyramid Vision Transformer v1 (Wang et al. 2021, "Pyramid Vision
Transformer: A Versatile Backbone for Dense Prediction without Convolutions")
and v2 (Wang et al. 2022, "PVT v2: Improved Baselines with Pyramid Vision
Transformer").

PVT v1 (v1 Sec. 3, Fig. 3): 4 stages; stage i starts with a non-overlapping
patch embedding (conv kernel = stride = P_i: 4, 2, 2, 2, then LayerNorm)
plus its own learned position embedding; the last stage prepends a class
token (with its own position embedding slot). Blocks are pre-norm SRA + MLP
(no conv in the MLP). One LayerNorm at the end; the head reads the class
token. The position embeddings are stored for the grid of `image_size`
(224 -> 56x56, 28x28, 14x14, 7x7 + 1) and bilinearly resampled when the
input is of another size, as the official code's `_get_pos_embed` does
(PyTorch bilinear, align_corners=False, from the stored grid).

image -> 4 stages; each stage starts with an overlapping patch embedding (a
strided conv with zero padding k // 2: k7 s4 for stage 0, k3 s2 after, then
LayerNorm), runs `depths[i]` pre-norm blocks and ends with a LayerNorm; the
last map is average pooled -> linear head (v2 Sec. 3, Fig. 2).

Block:  x + DropPath(SRA(LN(x))),  x + DropPath(ConvFFN(LN(x))).
- Spatial-reduction attention (v1 Sec. 3.3): queries come from every token;
  keys / values from the map reduced by a conv of kernel = stride = R_i
  (sr_ratios 8, 4, 2, 1) followed by LayerNorm (no reduction when R_i = 1).
- Linear SRA (v2 Sec. 3.1, `linear=True`, PVTv2-b2-li): the map is average
  pooled to 7x7 (adaptive: window i covers rows floor(i H / 7) to
  ceil((i + 1) H / 7)), then a 1x1 conv, LayerNorm and GELU; the ConvFFN
  then also has a ReLU after fc1 (as the released code).
- Convolutional feed-forward (v2 Sec. 3.3): fc1 -> 3x3 depthwise conv (zero
  padding, doubles as position encoding: there is no position embedding)
  -> GELU -> fc2.

Input sizes: any, as the reference. Every strided convolution floors (v2's
overlapping patch embeddings: ceil-like floor((n + 2 (k // 2) - k) / s) + 1;
v1's non-overlapping ones and the spatial-reduction convs: floor(n / R)),
and v1 resamples its position embeddings to each stage's grid. Only a map
smaller than its spatial-reduction ratio is refused (the reference's conv
fails there too), with a UserError naming the smallest input that works.

`__call__(images, train=False)` returns `(logits, out)`; `out` holds
'stage_{i}' (NHWC map after stage i's final LayerNorm), 'feature_map' (the
last of them) and 'pre_logits' (the pooled features).

v1's `out` holds the same 'stage_{i}' maps (class token left out, before
the final LayerNorm) and 'pre_logits' (the normed class token).

Weights: vitjax.convert.pvt imports HF `PvtForImageClassification` (v1) and
`PvtV2ForImageClassification` (v2).
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vitjax.errors import UserError
from vitjax.models.features import FeatureLevel, stage_layer_groups
from vitjax.models.layers import DropPath, dot_product_attention, resample_posemb
from vitjax.models.layers.checks import check_stage_fields
from vitjax.models.layers.mlp import gelu
from vitjax.models.registry import register_model

_TRUNC = nn.initializers.truncated_normal(stddev=0.02)


def _size_problem(size, strides, sr_ratios, linear):
  r = size
  for i, s in enumerate(strides):
    if r % s:
      return f"stage {i} gets a side of {r}, not divisible by its stride {s}"
    r //= s
    if not linear and sr_ratios[i] > 1 and r % sr_ratios[i]:
      return (f"stage {i} has a side of {r}, not divisible by its spatial-reduction "
              f"ratio {sr_ratios[i]}")
  return None


def check_min_size(h, w, sizes_fn, sr_ratios, linear=False, family="PVT v2"):
  """Raises UserError when a stage map (`sizes_fn(side)` -> per-stage sides)
  is smaller than its spatial-reduction ratio (or empty): the reduction conv
  has no output there, in the reference as here."""
  def problem(side):
    for i, r in enumerate(sizes_fn(side)):
      need = 1 if linear else max(1, sr_ratios[i])
      if r < need:
        return i, r, need
    return None
  for name, side in (("height", h), ("width", w)):
    bad = problem(side)
    if bad:
      i, r, need = bad
      smallest = next(s for s in range(side + 1, 64 * side + 64) if not problem(s))
      raise UserError(
          f"{family}: input {name} {side} gives stage {i} a map side of {r}, smaller than "
          f"{'1' if need == 1 else f'its spatial-reduction ratio {need}'}. Use an input "
          f"side >= {smallest} (--config.input.image_size).")


def v2_stage_sides(side, patch_sizes, strides):
  """Map side of each stage of PVT v2 (overlapping convs, padding k // 2)."""
  out = []
  for p, s in zip(patch_sizes, strides):
    side = (side + 2 * (p // 2) - p) // s + 1
    out.append(side)
  return out


def v1_stage_sides(side, patch_sizes):
  """Map side of each stage of PVT v1 (non-overlapping convs floor)."""
  out = []
  for p in patch_sizes:
    side //= p
    out.append(side)
  return out


def adaptive_avg_pool_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] averaging weights of adaptive average pooling along one
  axis: output i averages inputs floor(i n_in / n_out) .. ceil((i+1) n_in / n_out) - 1."""
  m = np.zeros((n_out, n_in), np.float32)
  for i in range(n_out):
    a, b = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
    m[i, a:b] = 1.0 / (b - a)
  return m


def adaptive_avg_pool(x, size: int):
  """NHWC adaptive average pooling to size x size."""
  _, h, w, _ = x.shape
  ph = jnp.asarray(adaptive_avg_pool_matrix(h, size), x.dtype)
  pw = jnp.asarray(adaptive_avg_pool_matrix(w, size), x.dtype)
  return jnp.einsum("ih,jw,bhwc->bijc", ph, pw, x)


class SpatialReductionAttention(nn.Module):
  """Multi-head attention whose keys / values come from a reduced map.

  sr_ratio R > 1: conv k = s = R then LayerNorm on the k/v source (PVT);
  linear: adaptive avg pool to `pool_size`, 1x1 conv, LayerNorm, GELU (PVT v2-li).
  Parameters: q (D -> D), kv (D -> 2D, keys first), proj; sr, norm.
  """
  num_heads: int
  sr_ratio: int = 1
  linear: bool = False
  pool_size: int = 7
  qkv_bias: bool = True
  attention_dropout: float = 0.0
  dropout: float = 0.0
  layer_norm_eps: float = 1e-6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, hw, deterministic: bool = True, cls_token=None):
    b, n, d = x.shape
    h, w = hw
    heads = self.num_heads
    q = nn.Dense(d, use_bias=self.qkv_bias, dtype=self.dtype, kernel_init=_TRUNC,
                 name="q")(x)
    src = x
    if self.linear or self.sr_ratio > 1:
      grid = x[:, n - h * w:].reshape(b, h, w, d)
      if self.linear:
        grid = adaptive_avg_pool(grid, self.pool_size)
        k, s = 1, 1
      else:
        k = s = self.sr_ratio
      grid = nn.Conv(d, (k, k), strides=(s, s), padding="VALID", dtype=self.dtype,
                     name="sr")(grid)
      src = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype,
                         name="norm")(grid.reshape(b, -1, d))
      if self.linear:
        src = gelu(src)
      if n > h * w:  # PVT v1: the class token (first) is a key / value too
        src = jnp.concatenate([x[:, :n - h * w], src], axis=1)
    kv = nn.Dense(2 * d, use_bias=self.qkv_bias, dtype=self.dtype, kernel_init=_TRUNC,
                  name="kv")(src)
    k_, v_ = jnp.split(kv.reshape(b, -1, 2, heads, d // heads), 2, axis=2)
    drop = nn.Dropout(self.attention_dropout)
    out = dot_product_attention(
        q.reshape(b, n, heads, d // heads), k_[:, :, 0], v_[:, :, 0],
        dropout_fn=lambda a: drop(a, deterministic=deterministic),
        sow_fn=lambda a: self.sow("intermediates", "attention", a))
    out = nn.Dense(d, dtype=self.dtype, kernel_init=_TRUNC, name="proj")(
        out.reshape(b, n, d))
    return nn.Dropout(self.dropout)(out, deterministic=deterministic)


class ConvFFN(nn.Module):
  """fc1 -> (ReLU if linear) -> 3x3 depthwise conv -> GELU -> fc2 (PVT v2)."""
  hidden_dim: int
  linear: bool = False
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, hw, deterministic: bool = True):
    b, n, d = x.shape
    h, w = hw
    x = nn.Dense(self.hidden_dim, dtype=self.dtype, kernel_init=_TRUNC, name="fc1")(x)
    if self.linear:
      x = jax.nn.relu(x)
    x = nn.Conv(self.hidden_dim, (3, 3), padding=((1, 1), (1, 1)),
                feature_group_count=self.hidden_dim, dtype=self.dtype,
                name="dwconv")(x.reshape(b, h, w, -1)).reshape(b, n, -1)
    x = gelu(x)
    x = nn.Dropout(self.dropout)(x, deterministic=deterministic)
    x = nn.Dense(d, dtype=self.dtype, kernel_init=_TRUNC, name="fc2")(x)
    return nn.Dropout(self.dropout)(x, deterministic=deterministic)


class PvtBlock(nn.Module):
  """Pre-norm block: SRA and a feed-forward (ConvFFN in v2, Mlp in v1)."""
  num_heads: int
  sr_ratio: int
  mlp_ratio: float
  version: int = 2
  linear: bool = False
  qkv_bias: bool = True
  dropout: float = 0.0
  attention_dropout: float = 0.0
  drop_path: float = 0.0
  layer_norm_eps: float = 1e-6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, hw, deterministic: bool = True):
    d = x.shape[-1]
    y = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name="norm1")(x)
    y = SpatialReductionAttention(
        self.num_heads, self.sr_ratio, linear=self.linear, qkv_bias=self.qkv_bias,
        attention_dropout=self.attention_dropout, dropout=self.dropout,
        layer_norm_eps=self.layer_norm_eps, dtype=self.dtype, name="attn")(
            y, hw, deterministic)
    x = x + DropPath(self.drop_path)(y, deterministic)
    y = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name="norm2")(x)
    hidden = int(d * self.mlp_ratio)
    if self.version == 2:
      y = ConvFFN(hidden, linear=self.linear, dropout=self.dropout, dtype=self.dtype,
                  name="mlp")(y, hw, deterministic)
    else:
      from vitjax.models.layers import Mlp  # pylint: disable=g-import-not-at-top
      y = Mlp(hidden, dropout=self.dropout, dtype=self.dtype, kernel_init=_TRUNC,
              bias_init=nn.initializers.zeros, name="mlp")(y, deterministic)
    return x + DropPath(self.drop_path)(y, deterministic)


def _head(module, pooled, out):
  out["pre_logits"] = pooled
  if not module.num_classes:
    return pooled.astype(jnp.float32), out
  init = nn.initializers.zeros if module.head_zero_init else _TRUNC
  logits = nn.Dense(module.num_classes, kernel_init=init, dtype=module.dtype,
                    name="head")(pooled)
  out["logits"] = logits
  return logits.astype(jnp.float32), out


class PyramidVisionTransformerV2(nn.Module):
  """PVT v2 classifier over NHWC images.

  embed_dims / depths / num_heads / mlp_ratios / sr_ratios: per stage.
  patch_sizes / strides: the overlapping patch embedding of each stage.
  linear: linear SRA (7x7 pooling) instead of the strided-conv reduction.
  drop_path_rate: stochastic depth, linear over all blocks from 0.
  num_classes: 0 gives no head (logits = pooled features).
  """
  num_classes: int = 1000
  embed_dims: Sequence[int] = (64, 128, 320, 512)
  depths: Sequence[int] = (3, 4, 6, 3)
  num_heads: Sequence[int] = (1, 2, 5, 8)
  mlp_ratios: Sequence[float] = (8, 8, 4, 4)
  sr_ratios: Sequence[int] = (8, 4, 2, 1)
  patch_sizes: Sequence[int] = (7, 3, 3, 3)
  strides: Sequence[int] = (4, 2, 2, 2)
  linear: bool = False
  qkv_bias: bool = True
  dropout: float = 0.0
  attention_dropout: float = 0.0
  drop_path_rate: float = 0.1
  layer_norm_eps: float = 1e-6
  head_zero_init: bool = True
  dtype: Any = jnp.float32

  def _checks(self, h, w):
    check_stage_fields("PVT v2", self, ("embed_dims", "num_heads", "mlp_ratios",
                                        "sr_ratios", "patch_sizes", "strides"))
    check_min_size(h, w, lambda n: v2_stage_sides(n, self.patch_sizes, self.strides),
                   self.sr_ratios, self.linear)

  def feature_levels(self):
    """'stage_i' (after stage i's norm) at the product of the strides so far,
    embed_dims[i] wide (models/features.py)."""
    return tuple(FeatureLevel(f"stage_{i}", int(np.prod(self.strides[:i + 1])), c)
                 for i, c in enumerate(self.embed_dims[:len(self.depths)]))

  def layer_groups(self):
    """Every block; a stage's patch embedding joins its first, its norm its last."""
    return stage_layer_groups((), self.depths,
                              first=("stage_{i}_patch_embed", "stage_{i}_patch_embed_norm"),
                              last=("stage_{i}_norm",))

  @nn.compact
  def __call__(self, images, *, train: bool = False):
    b, h, w, _ = images.shape
    self._checks(h, w)
    det = not train
    out = {}
    x = images.astype(self.dtype)
    total = sum(self.depths)
    dpr = np.linspace(0.0, self.drop_path_rate, total) if total > 1 else [0.0] * total
    k = 0
    for i, depth in enumerate(self.depths):
      p, s = self.patch_sizes[i], self.strides[i]
      x = nn.Conv(self.embed_dims[i], (p, p), strides=(s, s),
                  padding=((p // 2, p // 2),) * 2, dtype=self.dtype,
                  name=f"stage_{i}_patch_embed")(x)
      _, gh, gw, d = x.shape
      x = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype,
                       name=f"stage_{i}_patch_embed_norm")(x.reshape(b, gh * gw, d))
      for j in range(depth):
        x = PvtBlock(self.num_heads[i], self.sr_ratios[i], self.mlp_ratios[i],
                     version=2, linear=self.linear, qkv_bias=self.qkv_bias,
                     dropout=self.dropout, attention_dropout=self.attention_dropout,
                     drop_path=float(dpr[k]), layer_norm_eps=self.layer_norm_eps,
                     dtype=self.dtype, name=f"stage_{i}_block_{j}")(x, (gh, gw), det)
        k += 1
      x = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype,
                       name=f"stage_{i}_norm")(x).reshape(b, gh, gw, d)
      out[f"stage_{i}"] = x
    out["feature_map"] = x
    return _head(self, jnp.mean(x, axis=(1, 2)), out)


# PVT v2 Table 1 / released configs (224x224, 1000 classes): b0 3.7M, b1 14.0M,
# b2 25.4M, b2-li 22.6M, b3 45.2M, b4 62.6M, b5 82.0M.
_V2_SMALL = dict(num_heads=(1, 2, 5, 8), sr_ratios=(8, 4, 2, 1))
PVT_V2_SIZES = {
    "b0": dict(embed_dims=(32, 64, 160, 256), depths=(2, 2, 2, 2), mlp_ratios=(8, 8, 4, 4)),
    "b1": dict(embed_dims=(64, 128, 320, 512), depths=(2, 2, 2, 2), mlp_ratios=(8, 8, 4, 4)),
    "b2": dict(embed_dims=(64, 128, 320, 512), depths=(3, 4, 6, 3), mlp_ratios=(8, 8, 4, 4)),
    "b2_li": dict(embed_dims=(64, 128, 320, 512), depths=(3, 4, 6, 3),
                  mlp_ratios=(8, 8, 4, 4), linear=True),
    "b3": dict(embed_dims=(64, 128, 320, 512), depths=(3, 4, 18, 3), mlp_ratios=(8, 8, 4, 4)),
    "b4": dict(embed_dims=(64, 128, 320, 512), depths=(3, 8, 27, 3), mlp_ratios=(8, 8, 4, 4)),
    "b5": dict(embed_dims=(64, 128, 320, 512), depths=(3, 6, 40, 3), mlp_ratios=(4, 4, 4, 4)),
}
# Stochastic depth of the released ImageNet-1k recipes.
PVT_V2_DROP_PATH = {"b0": 0.1, "b1": 0.1, "b2": 0.1, "b2_li": 0.1, "b3": 0.2, "b4": 0.3,
                    "b5": 0.3}


def _register_v2(size):
  def factory(**overrides):
    kw = dict(_V2_SMALL, **PVT_V2_SIZES[size], drop_path_rate=PVT_V2_DROP_PATH[size])
    kw.update(overrides)
    return PyramidVisionTransformerV2(**kw)
  factory.__doc__ = f"PVT v2-{size.replace('_', '-')}, 224x224."
  register_model(factory, name=f"pvt_v2_{size}")


for _size in PVT_V2_SIZES:
  _register_v2(_size)


class PyramidVisionTransformer(nn.Module):
  """PVT v1 classifier over NHWC images (fields as PyramidVisionTransformerV2;
  patch_sizes are both kernel and stride of each stage's patch embedding)."""
  num_classes: int = 1000
  embed_dims: Sequence[int] = (64, 128, 320, 512)
  depths: Sequence[int] = (2, 2, 2, 2)
  num_heads: Sequence[int] = (1, 2, 5, 8)
  mlp_ratios: Sequence[float] = (8, 8, 4, 4)
  sr_ratios: Sequence[int] = (8, 4, 2, 1)
  patch_sizes: Sequence[int] = (4, 2, 2, 2)
  image_size: int = 224
  qkv_bias: bool = True
  dropout: float = 0.0
  attention_dropout: float = 0.0
  drop_path_rate: float = 0.1
  layer_norm_eps: float = 1e-6
  head_zero_init: bool = True
  dtype: Any = jnp.float32

  def _checks(self, h, w):
    check_stage_fields("PVT", self, ("embed_dims", "num_heads", "mlp_ratios",
                                     "sr_ratios", "patch_sizes"))
    if self.sr_ratios[-1] != 1:
      raise UserError("PVT: the last stage (with the class token) needs sr_ratio 1, got "
                      f"{self.sr_ratios[-1]}.")
    check_min_size(h, w, lambda n: v1_stage_sides(n, self.patch_sizes), self.sr_ratios,
                   family="PVT")
    if _size_problem(self.image_size, self.patch_sizes, self.sr_ratios, False):
      raise UserError(f"PVT: image_size={self.image_size} (the grid the position "
                      "embeddings are stored for) is not a valid input size: "
                      f"{_size_problem(self.image_size, self.patch_sizes, self.sr_ratios, False)}.")

  def feature_levels(self):
    """'stage_i' (class token left out) at the product of the patch sizes so
    far, embed_dims[i] wide (models/features.py)."""
    return tuple(FeatureLevel(f"stage_{i}", int(np.prod(self.patch_sizes[:i + 1])), c)
                 for i, c in enumerate(self.embed_dims[:len(self.depths)]))

  def layer_groups(self):
    """The class token, then every block; a stage's patch embedding and
    position embedding join its first."""
    return stage_layer_groups(("cls_token",), self.depths,
                              first=("stage_{i}_patch_embed", "stage_{i}_patch_embed_norm",
                                     "stage_{i}_pos_embed"))

  @nn.compact
  def __call__(self, images, *, train: bool = False):
    b, h, w, _ = images.shape
    self._checks(h, w)
    det = not train
    out = {}
    x = images.astype(self.dtype)
    total = sum(self.depths)
    dpr = np.linspace(0.0, self.drop_path_rate, total) if total > 1 else [0.0] * total
    k, n = 0, len(self.depths)
    for i, depth in enumerate(self.depths):
      p = self.patch_sizes[i]
      x = nn.Conv(self.embed_dims[i], (p, p), strides=(p, p), padding="VALID",
                  dtype=self.dtype, name=f"stage_{i}_patch_embed")(x)
      _, gh, gw, d = x.shape
      x = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype,
                       name=f"stage_{i}_patch_embed_norm")(x.reshape(b, gh * gw, d))
      last = i == n - 1
      if last:
        cls = self.param("cls_token", nn.initializers.zeros, (1, 1, d))
        x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, d)).astype(x.dtype), x], axis=1)
      native = self.image_size // int(np.prod(self.patch_sizes[:i + 1]))
      pos = self.param(f"stage_{i}_pos_embed", _TRUNC,
                       (1, native * native + int(last), d))
      pos = resample_posemb(pos, (gh, gw), num_prefix_tokens=int(last),
                            old_grid=(native, native), method="bilinear_torch")
      x = nn.Dropout(self.dropout)(x + pos.astype(x.dtype), deterministic=det)
      for j in range(depth):
        x = PvtBlock(self.num_heads[i], self.sr_ratios[i], self.mlp_ratios[i],
                     version=1, qkv_bias=self.qkv_bias, dropout=self.dropout,
                     attention_dropout=self.attention_dropout, drop_path=float(dpr[k]),
                     layer_norm_eps=self.layer_norm_eps, dtype=self.dtype,
                     name=f"stage_{i}_block_{j}")(x, (gh, gw), det)
        k += 1
      out[f"stage_{i}"] = x[:, x.shape[1] - gh * gw:].reshape(b, gh, gw, d)
      if not last:
        x = out[f"stage_{i}"]
    x = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name="norm")(x)
    out["feature_map"] = x[:, 1:].reshape(out[f"stage_{n - 1}"].shape)
    return _head(self, x[:, 0], out)


# PVT v1 Table 1/2 (224x224, 1000 classes): Tiny 13.2M, Small 24.5M,
# Medium 44.2M, Large 61.4M.
PVT_SIZES = {
    "tiny": dict(depths=(2, 2, 2, 2)),
    "small": dict(depths=(3, 4, 6, 3)),
    "medium": dict(depths=(3, 4, 18, 3)),
    "large": dict(depths=(3, 8, 27, 3)),
}
PVT_DROP_PATH = {"tiny": 0.1, "small": 0.1, "medium": 0.1, "large": 0.1}


def _register_v1(size):
  def factory(**overrides):
    kw = dict(embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8),
              mlp_ratios=(8, 8, 4, 4), sr_ratios=(8, 4, 2, 1), patch_sizes=(4, 2, 2, 2),
              **PVT_SIZES[size], drop_path_rate=PVT_DROP_PATH[size])
    kw.update(overrides)
    return PyramidVisionTransformer(**kw)
  factory.__doc__ = f"PVT-{size.capitalize()} (v1), 224x224."
  register_model(factory, name=f"pvt_{size}")


for _size in PVT_SIZES:
  _register_v1(_size)
