"""Focal Transformer (Yang et al. 2021, "Focal Self-attention for Local-Global
Interactions in Vision Transformers", NeurIPS 2021).

image -> 4x4 patch embedding (a strided conv) + LayerNorm -> 4 stages; stage
i > 0 starts with a 2x2 patch embedding (strided conv C -> 2C + LayerNorm, the
paper's "patch embedding layers in between", Sec. 3.1, Fig. 2), then
`depths[i]` pre-norm blocks
    x + DropPath(FocalAttention(LN(x))),  x + DropPath(MLP(LN(x)))
-> LayerNorm -> global average pool -> linear head.

Focal self-attention (layers/focal_attention.py): each M x M query window
(M = 7) attends to the fine tokens of its window grown by `expand_size` (3)
on each side and, per further focal level, to pooled sub-window tokens of the
surrounding region (level 1: sub-windows of M x M, a focal_window x
focal_window region; stage-wise focal windows 7, 5, 3, 1). No window shift
(the released models use none).

Names (the receptive-field naming of the released detection models):
`*_srf` (small receptive field): focal_level 2 (fine + one pooled level),
window 7 -- the released ImageNet models; `*_lrf` (large receptive field):
focal_level 3 (one more pooled level of sub-windows floor(M/2) = 3, region
focal_window + 1).

Window clamping (as Swin and the released code): a stage whose map is not
larger than M uses one window of the map's side and no ring (e = 0). Every
stage's map must divide by its window and be even before each downsampling;
other input sizes are refused with a UserError naming the nearest valid
sizes (the released code pads instead; vitjax does not).

`__call__(images, train=False)` returns `(logits, out)`; `out` holds 'stem'
(embedded patch grid), 'stage_{i}' (NHWC map after stage i), 'encoded' (the
last map after the final norm; also 'feature_map'), 'pre_logits' (pooled).
`focal_flops` counts multiply-adds analytically (the paper's FLOPs).
"""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from vitjax.errors import UserError
from vitjax.models.features import FeatureLevel, stage_layer_groups
from vitjax.models.layers import DropPath, Mlp, PatchEmbed
from vitjax.models.layers.checks import check_stage_fields
from vitjax.models.layers.focal_attention import FocalAttention, focal_num_keys
from vitjax.models.registry import register_model
from vitjax.models.swin import nearest_valid_sizes, stage_windows


def check_input_size(h: int, w: int, patch_size: int, num_stages: int, window_size: int):
  """Raises UserError unless an h x w input runs through every stage."""
  problems = []
  for name, size in (("height", h), ("width", w)):
    why = None
    if size % patch_size:
      why = f"it is not divisible by the patch size {patch_size}"
    else:
      r = size // patch_size
      rh, rw = h // patch_size, w // patch_size
      for i in range(num_stages):
        win, _ = stage_windows(rh, rw, window_size)
        if r % win:
          why = f"stage {i} has a {rh}x{rw} feature map, not divisible by the window {win}"
          break
        if i < num_stages - 1 and r % 2:
          why = f"stage {i} has a {rh}x{rw} feature map, odd, which the 2x2 embedding cannot halve"
          break
        r, rh, rw = r // 2, rh // 2, rw // 2
    if why:
      lo, hi = nearest_valid_sizes(size, patch_size, num_stages, window_size)
      near = " or ".join(str(s) for s in (lo, hi) if s)
      problems.append(f"input {name} {size}: {why}. Nearest valid sizes: {near}")
  if problems:
    raise UserError(
        f"Focal Transformer (patch {patch_size}, window {window_size}, {num_stages} stages) "
        f"needs input sides divisible by patch * window * 2^(stages-1) = "
        f"{patch_size * window_size * 2 ** (num_stages - 1)} (a stage map not larger than "
        f"the window uses one window of its side). " + "; ".join(problems) +
        " (set via --config.input.image_size, or change --config.model.window_size).")


class FocalBlock(nn.Module):
  """Pre-norm block: focal self-attention and MLP with residuals."""
  num_heads: int
  window_size: int
  expand_size: int
  focal_level: int
  focal_window: int
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  dropout: float = 0.0
  attention_dropout: float = 0.0
  drop_path: float = 0.0
  layer_norm_eps: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    c = x.shape[-1]
    y = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name="norm1")(x)
    y = FocalAttention(self.num_heads, self.window_size, self.expand_size, self.focal_level,
                       self.focal_window, qkv_bias=self.qkv_bias,
                       attention_dropout=self.attention_dropout, dropout=self.dropout,
                       dtype=self.dtype, name="attn")(y, deterministic)
    x = x + DropPath(self.drop_path)(y, deterministic)
    y = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name="norm2")(x)
    y = Mlp(int(c * self.mlp_ratio), dropout=self.dropout, dtype=self.dtype,
            kernel_init=nn.initializers.truncated_normal(stddev=0.02),
            bias_init=nn.initializers.zeros, name="mlp")(y, deterministic)
    return x + DropPath(self.drop_path)(y, deterministic)


class FocalTransformer(nn.Module):
  """Focal Transformer classifier over NHWC images.

  depths / num_heads / focal_levels / focal_windows / expand_sizes: per
  stage; the width doubles at each stage from embed_dim. window_size: M.
  drop_path_rate: stochastic depth, linear over all blocks from 0.
  num_classes: 0 gives no head (logits = pooled features).
  """
  num_classes: int = 1000
  patch_size: int = 4
  embed_dim: int = 96
  depths: Sequence[int] = (2, 2, 6, 2)
  num_heads: Sequence[int] = (3, 6, 12, 24)
  window_size: int = 7
  focal_levels: Sequence[int] = (2, 2, 2, 2)
  focal_windows: Sequence[int] = (7, 5, 3, 1)
  expand_sizes: Sequence[int] = (3, 3, 3, 3)
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  dropout: float = 0.0
  attention_dropout: float = 0.0
  drop_path_rate: float = 0.2
  layer_norm_eps: float = 1e-5
  dtype: Any = jnp.float32

  @property
  def embed_dims(self):
    return tuple(self.embed_dim * 2 ** i for i in range(len(self.depths)))

  def _checks(self, h, w):
    check_stage_fields("Focal Transformer", self,
                       ("num_heads", "focal_levels", "focal_windows", "expand_sizes"))
    if self.window_size < 1:
      raise UserError(f"Focal Transformer window_size must be >= 1, got {self.window_size}.")
    for i, (lv, fw, e) in enumerate(zip(self.focal_levels, self.focal_windows,
                                        self.expand_sizes)):
      if lv < 1 or 2 ** (lv - 2) > self.window_size:
        top = int(np.log2(self.window_size)) + 2
        raise UserError(
            f"Focal Transformer stage {i}: focal_level {lv} needs 1 <= level and "
            f"2^(level-2) <= window_size {self.window_size} (sub-windows of side "
            f"floor(M / 2^(level-2)) >= 1); use a focal_level in 1..{top}.")
      if fw < 1 or fw % 2 == 0:
        raise UserError(f"Focal Transformer stage {i}: focal_window {fw} must be odd and "
                        f">= 1 (a region centred on the window); use {max(1, fw - 1)} or "
                        f"{fw + 1}.")
      if e < 0:
        raise UserError(f"Focal Transformer stage {i}: expand_size {e} must be >= 0.")
    check_input_size(h, w, self.patch_size, len(self.depths), self.window_size)

  def feature_levels(self):
    """'stage_i' at stride patch_size * 2^i, embed_dim * 2^i wide (models/features.py)."""
    return tuple(FeatureLevel(f"stage_{i}", self.patch_size * 2 ** i, self.embed_dim * 2 ** i)
                 for i in range(len(self.depths)))

  def layer_groups(self):
    """The patch embedding, then every block; a stage's downsampling joins its first."""
    return stage_layer_groups(("patch_embed", "patch_embed_norm"), self.depths,
                              first=("stage_{i}_downsample", "stage_{i}_downsample_norm"))

  @nn.compact
  def __call__(self, images, *, train: bool = False):
    _, h, w, _ = images.shape
    self._checks(h, w)
    deterministic = not train
    out = {}
    x = PatchEmbed(self.patch_size, self.embed_dim, dtype=self.dtype,
                   name="patch_embed")(images.astype(self.dtype))
    x = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name="patch_embed_norm")(x)
    x = nn.Dropout(self.dropout)(x, deterministic=deterministic)
    out["stem"] = x

    total = sum(self.depths)
    dpr = np.linspace(0.0, self.drop_path_rate, total) if total > 1 else [0.0] * total
    k = 0
    for i, depth in enumerate(self.depths):
      if i > 0:
        x = PatchEmbed(2, self.embed_dims[i], dtype=self.dtype,
                       name=f"stage_{i}_downsample")(x)
        x = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype,
                         name=f"stage_{i}_downsample_norm")(x)
      m, _ = stage_windows(x.shape[1], x.shape[2], self.window_size)
      expand = self.expand_sizes[i] if m == self.window_size and min(x.shape[1:3]) > m else 0
      for j in range(depth):
        x = FocalBlock(self.num_heads[i], m, expand, self.focal_levels[i], self.focal_windows[i],
                       mlp_ratio=self.mlp_ratio, qkv_bias=self.qkv_bias, dropout=self.dropout,
                       attention_dropout=self.attention_dropout, drop_path=float(dpr[k]),
                       layer_norm_eps=self.layer_norm_eps, dtype=self.dtype,
                       name=f"stage_{i}_block_{j}")(x, deterministic)
        k += 1
      out[f"stage_{i}"] = x

    x = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name="norm")(x)
    out["encoded"] = out["feature_map"] = x
    pooled = jnp.mean(x, axis=(1, 2))
    out["pre_logits"] = pooled
    if not self.num_classes:
      return pooled.astype(jnp.float32), out
    logits = nn.Dense(self.num_classes, dtype=self.dtype,
                      kernel_init=nn.initializers.truncated_normal(stddev=0.02),
                      name="head")(pooled)
    out["logits"] = logits
    return logits.astype(jnp.float32), out


def focal_flops(model: FocalTransformer, image_size: int) -> int:
  """Multiply-adds of one forward pass at image_size x image_size (the
  paper's "FLOPs"): convolutions, dense layers, sub-window pooling and the
  two attention products (q k^T and a v, over every key a window gathers,
  masked border keys included). Norms, softmax and GELU are not counted."""
  c = model.embed_dim
  r = image_size // model.patch_size
  macs = r * r * 3 * model.patch_size ** 2 * c
  for i, depth in enumerate(model.depths):
    if i > 0:
      macs += (r // 2) ** 2 * 4 * c * 2 * c
      r, c = r // 2, 2 * c
    m, _ = stage_windows(r, r, model.window_size)
    e = model.expand_sizes[i] if min(r, r) > m else 0
    n = r * r
    keys = focal_num_keys(m, e, model.focal_levels[i], model.focal_windows[i])
    per_block = n * 3 * c * c + 2 * n * keys * c + n * c * c
    per_block += 2 * n * c * int(c * model.mlp_ratio)
    for level in range(1, model.focal_levels[i]):
      step = 2 ** (level - 1)
      s = m // step
      g = (r // m) * step
      per_block += g * g * (s * s * c + 3 * c * c)  # pooling + qkv of pooled tokens
    macs += depth * per_block
  return macs + c * model.num_classes


# Paper Table 1/2 (Yang et al. 2021), 224x224, window 7, focal windows
# (7, 5, 3, 1), expand size 3, focal level 2: Focal-T 29.1M / 4.9 GFLOPs,
# Focal-S 51.1M / 9.1G, Focal-B 89.8M / 16.0G (the released checkpoints'
# README: 28.9M / 4.9G, 51.1M / 9.4G, 89.8M / 16.4G).
FOCAL_SIZES = {
    "tiny": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)),
    "small": dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24)),
    "base": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)),
}
# Stochastic depth of the released ImageNet-1k configs.
FOCAL_DROP_PATH = {"tiny": 0.2, "small": 0.3, "base": 0.5}
FOCAL_RECEPTIVE_FIELDS = {"srf": 2, "lrf": 3}  # focal level (fine level included)


def _register(size, rf):
  def factory(**overrides):
    kw = dict(FOCAL_SIZES[size], patch_size=4, window_size=7,
              focal_levels=(FOCAL_RECEPTIVE_FIELDS[rf],) * 4, focal_windows=(7, 5, 3, 1),
              expand_sizes=(3, 3, 3, 3), drop_path_rate=FOCAL_DROP_PATH[size])
    kw.update(overrides)
    return FocalTransformer(**kw)
  factory.__doc__ = (f"Focal-{size[0].upper()}, {rf} (focal level "
                     f"{FOCAL_RECEPTIVE_FIELDS[rf]}), patch 4, window 7, 224x224.")
  register_model(factory, name=f"focal_{size}_{rf}")


for _size in FOCAL_SIZES:
  for _rf in FOCAL_RECEPTIVE_FIELDS:
    _register(_size, _rf)
