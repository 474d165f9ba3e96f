"""Convolutional vision Transformer, CvT (Wu et al. 2021, "CvT: Introducing
Convolutions to Vision Transformers").

image -> 3 stages; each starts with a convolutional token embedding (an
overlapping strided conv: k7 s4 p2, then k3 s2 p1, followed by LayerNorm;
Sec. 3.1) and runs `depths[i]` pre-norm blocks. There is no position
embedding (Sec. 3.4): the convolutions carry position. The class token joins
only in the last stage (Sec. 3, Fig. 2); the head reads its final LayerNorm.

Block:  x + DropPath(ConvAttn(LN(x))),  x + DropPath(MLP(LN(x))).
Convolutional projection (Sec. 3.2, Fig. 3): the tokens are reshaped to the
map; q, k and v each come from their own depthwise 3x3 conv (no bias) +
BatchNorm, flattened, then a Linear. Queries use stride 1, keys / values
stride 2 (a 4x shorter sequence). The class token skips the convolutions
and is prepended to q, k and v. As the released code, the attention logits
are scaled by 1 / sqrt(width) (the whole width, not the head width).

BatchNorm statistics live in the 'batch_stats' collection (running averages
in eval; batch statistics, updated with momentum 0.9, when train=True: pass
mutable=['batch_stats']).

Input sizes: any, as HF's CvT: every strided convolution (patch
embeddings, the key / value projections) floors, floor((n + 2p - k) / s) + 1
(224 -> 56, 28, 14; 97 -> 25, 13, 7).

`__call__(images, train=False)` returns `(logits, out)`; `out` holds 'stem'
(the first embedded map), 'stage_{i}' (NHWC map after stage i, class token
left out), 'feature_map' (the last of them) and 'pre_logits' (the normed
class token).

Weights: vitjax.convert.cvt imports HF `CvtForImageClassification`.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from vitjax.errors import UserError
from vitjax.models.features import FeatureLevel, stage_layer_groups
from vitjax.models.layers import DropPath, Mlp, dot_product_attention
from vitjax.models.layers.checks import check_stage_fields
from vitjax.models.registry import register_model

_TRUNC = nn.initializers.truncated_normal(stddev=0.02)


class ConvProjection(nn.Module):
  """Depthwise conv (no bias) + BatchNorm on an NHWC map, flattened to tokens."""
  kernel_size: int = 3
  stride: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    b, _, _, d = x.shape
    k, p = self.kernel_size, self.kernel_size // 2
    x = nn.Conv(d, (k, k), strides=(self.stride, self.stride), padding=((p, p), (p, p)),
                feature_group_count=d, use_bias=False, dtype=self.dtype, name="conv")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                     dtype=self.dtype, name="bn")(x)
    return x.reshape(b, -1, d)


class ConvAttention(nn.Module):
  """Multi-head attention with convolutional q / k / v projections."""
  num_heads: int
  kernel_size: int = 3
  stride_q: int = 1
  stride_kv: int = 2
  qkv_bias: bool = True
  attention_dropout: float = 0.0
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, hw, train: bool = False):
    b, n, d = x.shape
    h, w = hw
    heads = self.num_heads
    n_cls = n - h * w
    grid = x[:, n_cls:].reshape(b, h, w, d)

    def project(name, stride):
      t = ConvProjection(self.kernel_size, stride, dtype=self.dtype, name=f"conv_{name}")(
          grid, train)
      t = jnp.concatenate([x[:, :n_cls], t], axis=1)
      t = nn.Dense(d, use_bias=self.qkv_bias, dtype=self.dtype, kernel_init=_TRUNC,
                   name=name)(t)
      return t.reshape(b, -1, heads, d // heads)

    q = project("q", self.stride_q)
    k = project("k", self.stride_kv)
    v = project("v", self.stride_kv)
    # dot_product_attention scales by head_dim ** -0.5; CvT uses width ** -0.5.
    q = q * jnp.asarray(((d // heads) / d) ** 0.5, q.dtype)
    drop = nn.Dropout(self.attention_dropout)
    out = dot_product_attention(
        q, k, v, dropout_fn=lambda a: drop(a, deterministic=not train),
        sow_fn=lambda a: self.sow("intermediates", "attention", a))
    out = nn.Dense(d, dtype=self.dtype, kernel_init=_TRUNC, name="proj")(
        out.reshape(b, -1, d))
    return nn.Dropout(self.dropout)(out, deterministic=not train)


class CvtBlock(nn.Module):
  num_heads: int
  mlp_ratio: float = 4.0
  kernel_size: int = 3
  stride_kv: int = 2
  qkv_bias: bool = True
  dropout: float = 0.0
  attention_dropout: float = 0.0
  drop_path: float = 0.0
  layer_norm_eps: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, hw, train: bool = False):
    det = not train
    y = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name="norm1")(x)
    y = ConvAttention(self.num_heads, self.kernel_size, 1, self.stride_kv, self.qkv_bias,
                      self.attention_dropout, self.dropout, dtype=self.dtype,
                      name="attn")(y, hw, train)
    x = x + DropPath(self.drop_path)(y, det)
    y = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name="norm2")(x)
    y = Mlp(int(x.shape[-1] * self.mlp_ratio), dropout=self.dropout, dtype=self.dtype,
            kernel_init=_TRUNC, bias_init=nn.initializers.zeros, name="mlp")(y, det)
    return x + DropPath(self.drop_path)(y, det)


class ConvolutionalVisionTransformer(nn.Module):
  """CvT classifier over NHWC images.

  embed_dims / depths / num_heads: per stage. patch_sizes / patch_strides /
  patch_paddings: the convolutional token embedding of each stage.
  kernel_qkv / stride_kv: the convolutional projection. drop_path_rate:
  stochastic depth, linear from 0 over the last stage's blocks (the earlier
  stages have none, as the released recipes). num_classes: 0 gives no head.
  """
  num_classes: int = 1000
  embed_dims: Sequence[int] = (64, 192, 384)
  depths: Sequence[int] = (1, 2, 10)
  num_heads: Sequence[int] = (1, 3, 6)
  mlp_ratio: float = 4.0
  patch_sizes: Sequence[int] = (7, 3, 3)
  patch_strides: Sequence[int] = (4, 2, 2)
  patch_paddings: Sequence[int] = (2, 1, 1)
  kernel_qkv: int = 3
  stride_kv: int = 2
  qkv_bias: bool = True
  dropout: float = 0.0
  attention_dropout: float = 0.0
  drop_path_rate: float = 0.1
  layer_norm_eps: float = 1e-5
  head_zero_init: bool = True
  dtype: Any = jnp.float32

  def _checks(self, h, w):
    check_stage_fields("CvT", self, ("embed_dims", "num_heads", "patch_sizes",
                                     "patch_strides", "patch_paddings"))
    for i, (k, s, p) in enumerate(zip(self.patch_sizes, self.patch_strides,
                                      self.patch_paddings)):
      if not 2 * p < k <= 2 * p + s:
        # out = floor((n + 2p - k) / s) + 1 equals n / s (n % s == 0) iff
        # -s <= 2p - k < 0.
        raise UserError(f"CvT stage {i}: a patch embedding with kernel {k}, stride {s}, "
                        f"padding {p} does not map an n-side map to n / {s}; use "
                        f"2 * padding < kernel <= 2 * padding + stride.")
    del h, w  # any size: the strided convs floor (module docstring)

  def feature_levels(self):
    """'stage_i' (class token left out) at the product of patch_strides so far,
    embed_dims[i] wide (models/features.py)."""
    return tuple(FeatureLevel(f"stage_{i}", int(np.prod(self.patch_strides[:i + 1])), c)
                 for i, c in enumerate(self.embed_dims[:len(self.depths)]))

  def layer_groups(self):
    """The class token, then every block; a stage's conv embedding joins its first."""
    return stage_layer_groups(("cls_token",), self.depths,
                              first=("stage_{i}_embed", "stage_{i}_embed_norm"))

  @nn.compact
  def __call__(self, images, *, train: bool = False):
    b, h, w, _ = images.shape
    self._checks(h, w)
    det = not train
    out = {}
    x = images.astype(self.dtype)
    n = len(self.depths)
    for i, depth in enumerate(self.depths):
      k, s, p = self.patch_sizes[i], self.patch_strides[i], self.patch_paddings[i]
      x = nn.Conv(self.embed_dims[i], (k, k), strides=(s, s), padding=((p, p), (p, p)),
                  dtype=self.dtype, name=f"stage_{i}_embed")(x)
      _, gh, gw, d = x.shape
      x = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype,
                       name=f"stage_{i}_embed_norm")(x.reshape(b, gh * gw, d))
      x = nn.Dropout(self.dropout)(x, deterministic=det)
      if i == 0:
        out["stem"] = x.reshape(b, gh, gw, d)
      last = i == n - 1
      if last:
        cls = self.param("cls_token", _TRUNC, (1, 1, d))
        x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, d)).astype(x.dtype), x], axis=1)
      dpr = (np.linspace(0.0, self.drop_path_rate, depth) if last and depth > 1
             else [self.drop_path_rate if last else 0.0] * depth)
      for j in range(depth):
        x = CvtBlock(self.num_heads[i], self.mlp_ratio, self.kernel_qkv, self.stride_kv,
                     self.qkv_bias, self.dropout, self.attention_dropout,
                     drop_path=float(dpr[j]), layer_norm_eps=self.layer_norm_eps,
                     dtype=self.dtype, name=f"stage_{i}_block_{j}")(x, (gh, gw), train)
      out[f"stage_{i}"] = x[:, x.shape[1] - gh * gw:].reshape(b, gh, gw, d)
      if not last:
        x = out[f"stage_{i}"]
    out["feature_map"] = out[f"stage_{n - 1}"]
    pooled = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name="norm")(x[:, 0])
    out["pre_logits"] = pooled
    if not self.num_classes:
      return pooled.astype(jnp.float32), out
    init = nn.initializers.zeros if self.head_zero_init else _TRUNC
    logits = nn.Dense(self.num_classes, kernel_init=init, dtype=self.dtype,
                      name="head")(pooled)
    out["logits"] = logits
    return logits.astype(jnp.float32), out


# CvT Table 2 (224x224, 1000 classes): CvT-13 20.0M, CvT-21 31.6M,
# CvT-W24 277.3M.
CVT_SIZES = {
    "13": dict(embed_dims=(64, 192, 384), depths=(1, 2, 10), num_heads=(1, 3, 6)),
    "21": dict(embed_dims=(64, 192, 384), depths=(1, 4, 16), num_heads=(1, 3, 6)),
    "w24": dict(embed_dims=(192, 768, 1024), depths=(2, 2, 20), num_heads=(3, 12, 16)),
}


def _register(size):
  def factory(**overrides):
    kw = dict(CVT_SIZES[size], drop_path_rate=0.1)
    kw.update(overrides)
    return ConvolutionalVisionTransformer(**kw)
  factory.__doc__ = f"CvT-{size.upper()}, 224x224."
  register_model(factory, name=f"cvt_{size}")


for _size in CVT_SIZES:
  _register(_size)
