"""Swin Transformer v1 (Liu et al. 2021, "Swin Transformer: Hierarchical Vision
Transformer using Shifted Windows") and v2 (Liu et al. 2022, "Swin Transformer
V2: Scaling Up Capacity and Resolution").

image -> 4x4 patch partition + linear embedding (a strided conv) + LayerNorm
-> 4 stages; stage i > 0 starts with patch merging (2x2 neighbours
concatenated, 4C -> 2C), then `depths[i]` blocks alternating regular (W-MSA)
and shifted (SW-MSA, shift M/2) window attention -> LayerNorm -> global
average pool -> linear head (v1 Sec. 3.1, Fig. 3).

v1 block (pre-norm):  x + DropPath(W-MSA(LN(x))),  x + DropPath(MLP(LN(x))).
v2 block (res-post-norm, v2 Sec. 3.1): x + DropPath(LN(W-MSA(x))),
  x + DropPath(LN(MLP(x))); attention is scaled cosine attention with the
  log-spaced continuous position bias (see layers/window_attention.py), and
  patch merging normalises after the reduction (LN(2C)) instead of before.

Window clamping (as HF transformers and timm): in a stage whose feature map
is not larger than the window (min(h, w) <= M), the window becomes
min(M, h, w) and the blocks do not shift (one window covers the map). For v1
the bias table of such a stage is for the clamped window.

Any input size (as HF `maybe_pad`, and the official code): the image is
zero-padded at the bottom / right to a multiple of the patch size; in every
block the (v1: normed) map is zero-padded to a multiple of the window before
the attention and cropped back after it (the padded tokens are keys like any
other, as in the reference); a map with an odd side is padded by one row /
column before patch merging. Stage maps are ceil(H / 4), ceil(H / 8), ...

`__call__(images, train=False)` returns `(logits, out)`; `out` holds 'stem'
(the embedded patch grid), 'stage_{i}' (NHWC feature map after stage i,
before the final norm), 'feature_map' (the last map after the final norm)
and 'pre_logits' (the pooled features). `mask` ([B, h, w] bool over the
patch grid, for SimMIM): masked patch embeddings (after their LayerNorm) are
replaced by a learned `mask_token`, created only when a mask is given.

Weights: vitjax.convert.swin imports HF `SwinForImageClassification` /
`Swinv2ForImageClassification` checkpoints; a v1 checkpoint of another window
size is adapted with `resample_relative_position_bias_table` (done by
`vitjax.convert.swin.adapt_window_size`, and when fine-tuning by
`fix_relative_position_bias`), a v2 one needs nothing.
"""

from typing import Any, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from vitjax.errors import UserError
from vitjax.models.features import FeatureLevel, stage_layer_groups
from vitjax.models.layers import (DropPath, Mlp, PatchEmbed, WindowAttention,
                                  WindowAttentionV2, apply_mask_token,
                                  resample_relative_position_bias_table, shifted_window_mask,
                                  window_partition, window_reverse)
from vitjax.models.registry import register_checkpoint_fix, register_model


def stage_windows(h: int, w: int, window_size: int) -> Tuple[int, int]:
  """(window, shift) used on an h x w map: the window is clamped to the map
  and the shift dropped when the map is not larger than the window."""
  if min(h, w) <= window_size:
    return min(h, w), 0
  return window_size, window_size // 2


def _size_problem(size: int, patch_size: int, num_stages: int, window_size: int):
  """Why a square `size` input does not fit (a string), or None if it fits."""
  if size % patch_size:
    return f"it is not divisible by the patch size {patch_size}"
  r = size // patch_size
  for i in range(num_stages):
    win, _ = stage_windows(r, r, window_size)
    if r % win:
      return (f"stage {i} has a {r}x{r} feature map, not divisible by the "
              f"window size {win}")
    if i < num_stages - 1:
      if r % 2:
        return f"stage {i} has a {r}x{r} feature map, odd, which patch merging cannot halve"
      r //= 2
  return None


def nearest_valid_sizes(size: int, patch_size: int, num_stages: int, window_size: int):
  """The largest valid input side below `size` and the smallest above it."""
  lo = next((s for s in range(size - 1, 0, -1)
             if not _size_problem(s, patch_size, num_stages, window_size)), None)
  hi = next(s for s in range(size + 1, 64 * size + 2)
            if not _size_problem(s, patch_size, num_stages, window_size))
  return lo, hi


class PatchMerging(nn.Module):
  """2x downsampling: the 2x2 neighbours (order (0,0), (1,0), (0,1), (1,1) as
  (row, col)) concatenated to 4C, then Linear 4C -> 2C without bias. v1 puts
  a LayerNorm(4C) before the reduction, v2 a LayerNorm(2C) after it."""
  version: int = 1
  layer_norm_eps: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    if h % 2 or w % 2:  # HF's maybe_pad: one zero row / column
      x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
    x = jnp.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2],
                         x[:, 0::2, 1::2], x[:, 1::2, 1::2]], axis=-1)
    norm = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name="norm")
    if self.version == 1:
      x = norm(x)
    x = nn.Dense(2 * c, use_bias=False, dtype=self.dtype,
                 kernel_init=nn.initializers.truncated_normal(stddev=0.02),
                 name="reduction")(x)
    return norm(x) if self.version == 2 else x


class SwinBlock(nn.Module):
  """One Swin block on an NHWC map: (shifted) window attention and MLP with
  residuals; pre-norm (v1) or residual post-norm (v2)."""
  num_heads: int
  window_size: int
  shift_size: int = 0
  mlp_ratio: float = 4.0
  version: int = 1
  pretrained_window_size: int = 0
  qkv_bias: bool = True
  dropout: float = 0.0
  attention_dropout: float = 0.0
  drop_path: float = 0.0
  layer_norm_eps: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    b, h, w, c = x.shape
    m, s = self.window_size, self.shift_size
    norm1 = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name="norm1")
    norm2 = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name="norm2")
    if self.version == 1:
      attn = WindowAttention(self.num_heads, m, qkv_bias=self.qkv_bias,
                             attention_dropout=self.attention_dropout,
                             dropout=self.dropout, dtype=self.dtype, name="attn")
    else:
      attn = WindowAttentionV2(self.num_heads, m, self.pretrained_window_size,
                               qkv_bias=self.qkv_bias,
                               attention_dropout=self.attention_dropout,
                               dropout=self.dropout, dtype=self.dtype, name="attn")

    y = norm1(x) if self.version == 1 else x
    hp, wp = h + -h % m, w + -w % m  # padded to the window multiple (HF maybe_pad)
    if (hp, wp) != (h, w):
      y = jnp.pad(y, ((0, 0), (0, hp - h), (0, wp - w), (0, 0)))
    if s:
      y = jnp.roll(y, (-s, -s), axis=(1, 2))  # cyclic shift (v1 Fig. 4)
    mask = shifted_window_mask(hp, wp, m, s)
    y = attn(window_partition(y, m), deterministic, mask=mask)
    y = window_reverse(y, m, hp, wp)
    if s:
      y = jnp.roll(y, (s, s), axis=(1, 2))
    y = y[:, :h, :w]
    if self.version == 2:
      y = norm1(y)
    x = x + DropPath(self.drop_path)(y, deterministic)

    y = norm2(x) if self.version == 1 else x
    y = Mlp(int(c * self.mlp_ratio), dropout=self.dropout, dtype=self.dtype,
            kernel_init=nn.initializers.truncated_normal(stddev=0.02),
            bias_init=nn.initializers.zeros, name="mlp")(y, deterministic)
    if self.version == 2:
      y = norm2(y)
    return x + DropPath(self.drop_path)(y, deterministic)


class SwinTransformer(nn.Module):
  """Swin v1 / v2 classifier over NHWC images.

  depths / num_heads: blocks and heads per stage; the width doubles at each
  stage from embed_dim. window_size: M (clamped per stage, see the module
  docstring). version: 1 or 2. pretrained_window_sizes: v2 only, per stage,
  0 = normalise the continuous position bias by the window itself.
  drop_path_rate: stochastic depth, increasing linearly over all blocks from
  0 to this value. num_classes: 0 gives no head (logits = pooled features).
  """
  num_classes: int = 1000
  patch_size: int = 4
  embed_dim: int = 96
  depths: Sequence[int] = (2, 2, 6, 2)
  num_heads: Sequence[int] = (3, 6, 12, 24)
  window_size: int = 7
  mlp_ratio: float = 4.0
  version: int = 1
  pretrained_window_sizes: Sequence[int] = (0, 0, 0, 0)
  qkv_bias: bool = True
  dropout: float = 0.0
  attention_dropout: float = 0.0
  drop_path_rate: float = 0.1
  layer_norm_eps: float = 1e-5
  head_zero_init: bool = True
  dtype: Any = jnp.float32

  def _checks(self, h, w):
    if self.version not in (1, 2):
      raise UserError(f"Swin version must be 1 or 2, got {self.version!r}.")
    if len(self.depths) != len(self.num_heads):
      raise UserError(f"Swin depths {tuple(self.depths)} and num_heads "
                      f"{tuple(self.num_heads)} must have one entry per stage.")
    for i, heads in enumerate(self.num_heads):
      width = self.embed_dim * 2 ** i
      if width % heads:
        raise UserError(f"Swin stage {i}: width {width} is not divisible by "
                        f"num_heads={heads}.")
    if self.window_size < 1:
      raise UserError(f"Swin window_size must be >= 1, got {self.window_size}.")
    del h, w  # any size: padded as HF's maybe_pad (module docstring)

  def feature_levels(self):
    """'stage_i' at stride patch_size * 2^i, embed_dim * 2^i wide (models/features.py)."""
    return tuple(FeatureLevel(f"stage_{i}", self.patch_size * 2 ** i, self.embed_dim * 2 ** i)
                 for i in range(len(self.depths)))

  def layer_groups(self):
    """The patch embedding, then every block; a stage's patch merging joins its first."""
    return stage_layer_groups(("patch_embed", "patch_embed_norm", "mask_token"), self.depths,
                              first=("stage_{i}_downsample",))

  @nn.compact
  def __call__(self, images, *, train: bool = False, mask=None):
    _, h, w, _ = images.shape
    self._checks(h, w)
    deterministic = not train
    out = {}
    x = PatchEmbed(self.patch_size, self.embed_dim, dtype=self.dtype, remainder="pad",
                   name="patch_embed")(images.astype(self.dtype))
    x = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype,
                     name="patch_embed_norm")(x)
    if mask is not None:
      x = apply_mask_token(self, x, mask)
    x = nn.Dropout(self.dropout)(x, deterministic=deterministic)
    out["stem"] = x

    total = sum(self.depths)
    dpr = np.linspace(0.0, self.drop_path_rate, total) if total > 1 else [0.0] * total
    k = 0
    pws = tuple(self.pretrained_window_sizes) + (0,) * len(self.depths)
    for i, (depth, heads) in enumerate(zip(self.depths, self.num_heads)):
      if i > 0:
        x = PatchMerging(self.version, self.layer_norm_eps, self.dtype,
                         name=f"stage_{i}_downsample")(x)
      m, s = stage_windows(x.shape[1], x.shape[2], self.window_size)
      for j in range(depth):
        x = SwinBlock(heads, m, shift_size=s if j % 2 else 0, mlp_ratio=self.mlp_ratio,
                      version=self.version, pretrained_window_size=pws[i],
                      qkv_bias=self.qkv_bias, dropout=self.dropout,
                      attention_dropout=self.attention_dropout,
                      drop_path=float(dpr[k]), layer_norm_eps=self.layer_norm_eps,
                      dtype=self.dtype, name=f"stage_{i}_block_{j}")(x, deterministic)
        k += 1
      out[f"stage_{i}"] = x

    x = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name="norm")(x)
    out["feature_map"] = x
    pooled = jnp.mean(x, axis=(1, 2))
    out["pre_logits"] = pooled
    if not self.num_classes:
      return pooled.astype(jnp.float32), out
    head_init = (nn.initializers.zeros if self.head_zero_init else
                 nn.initializers.truncated_normal(stddev=0.02))
    logits = nn.Dense(self.num_classes, kernel_init=head_init, dtype=self.dtype,
                      name="head")(pooled)
    out["logits"] = logits
    return logits.astype(jnp.float32), out


@register_checkpoint_fix(SwinTransformer)
def fix_relative_position_bias(key, value, shape, model):
  """Fine-tuning with another window size: a v1 bias table [(2M-1)^2, heads] is
  resampled to the new window. v2 needs nothing: its continuous position bias
  is an MLP of the offsets, which (like v1's index) are recomputed from the
  window size at every call."""
  del model
  if not key.endswith("relative_position_bias_table") or value.ndim != 2 or (
      value.shape[-1] != shape[-1]):
    return None
  new_window = (int(round(np.sqrt(shape[0]))) + 1) // 2
  return resample_relative_position_bias_table(value, new_window)


# Swin v1 Table 1 / Sec. 3.3 (C, layer numbers, heads; window 7, 224x224):
# Swin-T 28M (28.3M at 1000 classes), S 50M (49.6M), B 88M (87.8M),
# L 197M (ImageNet-22k pre-trained, fine-tuned at 1k classes).
SWIN_SIZES = {
    "tiny": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)),
    "small": dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24)),
    "base": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)),
    "large": dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48)),
}
# Stochastic depth of the ImageNet-1k recipes (v1 Sec. 4.1: 0.2, 0.3, 0.5).
SWIN_DROP_PATH = {"tiny": 0.2, "small": 0.3, "base": 0.5, "large": 0.2}

# Swin v2 (v2 Table 1 / released configs): same shapes as v1 T/S/B, 256x256,
# window 8: V2-T 28.3M, V2-S 49.7M, V2-B 87.9M.
SWINV2_SIZES = {k: SWIN_SIZES[k] for k in ("tiny", "small", "base")}


def _register_swin(size):
  def factory(**overrides):
    kw = dict(SWIN_SIZES[size], patch_size=4, window_size=7, version=1,
              drop_path_rate=SWIN_DROP_PATH[size])
    kw.update(overrides)
    return SwinTransformer(**kw)
  factory.__doc__ = f"Swin-{size[0].upper()} (v1), patch 4, window 7, 224x224."
  register_model(factory, name=f"swin_{size}_patch4_window7_224")


def _register_swinv2(size):
  def factory(**overrides):
    kw = dict(SWINV2_SIZES[size], patch_size=4, window_size=8, version=2,
              drop_path_rate=SWIN_DROP_PATH[size])
    kw.update(overrides)
    return SwinTransformer(**kw)
  factory.__doc__ = f"Swin-V2-{size[0].upper()}, patch 4, window 8, 256x256."
  register_model(factory, name=f"swinv2_{size}_window8_256")


for _size in SWIN_SIZES:
  _register_swin(_size)
for _size in SWINV2_SIZES:
  _register_swinv2(_size)
