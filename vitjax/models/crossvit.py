"""CrossViT (Chen et al. 2021, "CrossViT: Cross-Attention Multi-Scale Vision
Transformer for Image Classification").

Two ViT branches see the image at two token scales: a small-patch branch (12
px patches of the 240 px image, narrower) and a large-patch branch (16 px
patches of the image resized to 224 px, wider). Each multi-scale encoder
(paper Sec. 3) runs ordinary pre-norm blocks in each branch, then fuses
the branches by cross-attention: the class token of branch
i is projected to branch i+1's width (f: LayerNorm, GELU, Linear), attends as
the only query to branch i+1's patch tokens (and itself), and is projected
back (g) to replace branch i's class token. After the encoders, each branch
gets a final LayerNorm and its own head on its class token; the logits are the
mean of the heads.

The dagger (†) variants replace each patch embedding by a small conv stack
(7x7/4, ReLU, 3x3, ReLU, 3x3; timm's `multi_conv`).

As in timm's port (whose weights this file imports, see
vitjax.convert.crossvit), the input size is fixed (`image_size`; positions are
learned per branch) and branch i sees the image resized to
int(image_size * img_scale[i]) by PyTorch-style bicubic interpolation (no
antialiasing): at 240 px the small branch gets the 240 px image itself and the
large branch a 224 px one.

`__call__(images, train=False)` returns `(logits, out)`. `out` holds, for the
small-patch branch 0: 'stem' (patch grid), 'stage_{i}' (patch tokens after
multi-scale encoder i, NHWC), 'encoded' (final normed tokens, class first),
'feature_map' (its normed patch tokens, NHWC: the declared feature level),
'logits_0'; the same for branch j >= 1 with the suffix '_b{j}' ('stem_b1',
'stage_0_b1', 'encoded_b1', 'logits_1'); 'pre_logits' (the branches' pooled
tokens concatenated, timm's pre-logits) and 'logits'.
"""

from typing import Any, Tuple

import flax.linen as nn
import jax.numpy as jnp

from vitjax.errors import UserError
from vitjax.models.features import FeatureLevel
from vitjax.models.layers import (ClassTokenCrossAttention, DropPath, PatchEmbed,
                                  resize_bicubic_torch)
from vitjax.models.layers.mlp import gelu
from vitjax.models.registry import register_model
from vitjax.models.vit import EncoderBlock


class ConvPatchEmbed(nn.Module):
  """The dagger models' 3-conv patch embedding for 12 or 16 px patches:
  7x7/4 (D/4) -> ReLU -> 3x3/3 (12) or 3x3/2 (16) (D/2) -> ReLU -> 3x3/1 or
  3x3/2 (D). Returns the NHWC patch grid."""
  patch_size: int
  embed_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    d = self.embed_dim
    if self.patch_size == 12:
      second, third = (3, ((0, 0), (0, 0))), (1, ((1, 1), (1, 1)))
    else:  # 16 (checked at construction)
      second, third = (2, ((1, 1), (1, 1))), (2, ((1, 1), (1, 1)))
    x = nn.Conv(d // 4, (7, 7), strides=(4, 4), padding=((3, 3), (3, 3)), dtype=self.dtype,
                name="conv_0")(x)
    x = nn.Conv(d // 2, (3, 3), strides=second[0], padding=second[1], dtype=self.dtype,
                name="conv_1")(nn.relu(x))
    return nn.Conv(d, (3, 3), strides=third[0], padding=third[1], dtype=self.dtype,
                   name="conv_2")(nn.relu(x))


class Projection(nn.Module):
  """CrossViT's f / g: LayerNorm -> GELU -> Linear to `features`."""
  features: int
  layer_norm_eps: float = 1e-6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name="norm")(x)
    return nn.Dense(self.features, dtype=self.dtype, name="fc")(gelu(x))


class CrossAttentionBlock(nn.Module):
  """cls + CrossAttn(LN([cls, other branch's patches])): returns the new
  class token [B, 1, D] (no MLP after the cross-attention)."""
  num_heads: int
  qkv_bias: bool = True
  dropout: float = 0.0
  attention_dropout: float = 0.0
  drop_path: float = 0.0
  layer_norm_eps: float = 1e-6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    y = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name="norm1")(x)
    y = ClassTokenCrossAttention(self.num_heads, qkv_bias=self.qkv_bias, dtype=self.dtype,
                                 attention_dropout=self.attention_dropout,
                                 dropout=self.dropout, name="attn")(y, deterministic)
    return x[:, :1] + DropPath(self.drop_path)(y, deterministic)


class MultiScaleBlock(nn.Module):
  """One multi-scale transformer encoder: per-branch blocks,
  then cross-attention fusion of every branch's class token with the next
  branch's patch tokens. `drop_paths[k]` is the rate of block k of a branch;
  the fusion uses the last one."""
  embed_dims: Tuple[int, ...]
  branch_depths: Tuple[int, ...]
  num_heads: Tuple[int, ...]
  mlp_ratios: Tuple[float, ...]
  fusion_depth: int = 1
  qkv_bias: bool = True
  dropout: float = 0.0
  attention_dropout: float = 0.0
  drop_paths: Tuple[float, ...] = (0.0,)
  layer_norm_eps: float = 1e-6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, xs, deterministic: bool = True):
    common = dict(qkv_bias=self.qkv_bias, dropout=self.dropout,
                  attention_dropout=self.attention_dropout,
                  layer_norm_eps=self.layer_norm_eps, dtype=self.dtype)
    n = len(xs)
    branch = []
    for j, x in enumerate(xs):
      for k in range(self.branch_depths[j]):
        x = EncoderBlock(self.num_heads[j], int(self.embed_dims[j] * self.mlp_ratios[j]),
                         drop_path=self.drop_paths[k], name=f"branch_{j}_block_{k}",
                         **common)(x, deterministic)
      branch.append(x)
    outs = []
    for j in range(n):
      o = (j + 1) % n  # branch j's class token visits branch o
      cls = Projection(self.embed_dims[o], self.layer_norm_eps, self.dtype,
                       name=f"proj_{j}")(branch[j][:, :1])
      t = jnp.concatenate([cls, branch[o][:, 1:]], axis=1)
      for k in range(self.fusion_depth):
        # As in the reference code, a second fusion layer sees only the class
        # token the first one returned.
        t = CrossAttentionBlock(self.num_heads[o], drop_path=self.drop_paths[-1],
                                name=f"fusion_{j}_{k}", **common)(t, deterministic)
      cls = Projection(self.embed_dims[j], self.layer_norm_eps, self.dtype,
                       name=f"revert_proj_{j}")(t[:, :1])
      outs.append(jnp.concatenate([cls, branch[j][:, 1:]], axis=1))
    return outs


def branch_sizes(image_size: int, img_scale) -> Tuple[int, ...]:
  """The input side of each branch: int(image_size * scale), as timm."""
  return tuple(int(image_size * s) for s in img_scale)


def valid_image_sizes(patch_sizes, img_scale, near: int, n: int = 2):
  """The valid image sizes closest to `near` below and above (up to `n`)."""
  def ok(s):
    return s > 0 and all(b > 0 and b % p == 0
                         for b, p in zip(branch_sizes(s, img_scale), patch_sizes))
  below = [s for s in range(near - 1, 0, -1) if ok(s)][:1]
  above = [s for s in range(near + 1, 8 * near + 64 * max(patch_sizes)) if ok(s)][:1]
  return (below + above)[:n]


class CrossViT(nn.Module):
  """CrossViT classifier over NHWC images of side `image_size`.

  patch_sizes / embed_dims / num_heads / mlp_ratios: per branch (small first).
  img_scale: branch j sees the image resized to int(image_size * img_scale[j]).
  num_blocks: multi-scale encoders (K in the paper); branch_depths: blocks of
    each branch inside one (N, M); fusion_depth: cross-attention layers (L).
  multi_conv: the dagger conv patch embedding (patch sizes 12 and 16 only).
  pool: 'cls' (class tokens) or 'gap' (mean of each branch's patch tokens).
  drop_path_rate: stochastic depth, rising linearly over the
    num_blocks * max(branch_depths) block positions (timm's rule for the
    released models; the fusion takes the rate of its encoder's last block).
  num_classes: 0 gives no heads (logits are the pre-logits).
  """
  num_classes: int = 1000
  image_size: int = 240
  img_scale: Tuple[float, ...] = (1.0, 224 / 240)
  patch_sizes: Tuple[int, ...] = (12, 16)
  embed_dims: Tuple[int, ...] = (96, 192)
  num_heads: Tuple[int, ...] = (3, 3)
  mlp_ratios: Tuple[float, ...] = (4.0, 4.0)
  num_blocks: int = 3
  branch_depths: Tuple[int, ...] = (1, 4)
  fusion_depth: int = 1
  multi_conv: bool = False
  pool: str = "cls"
  qkv_bias: bool = True
  dropout: float = 0.0
  attention_dropout: float = 0.0
  drop_path_rate: float = 0.0
  layer_norm_eps: float = 1e-6
  head_zero_init: bool = False
  dtype: Any = jnp.float32

  def __post_init__(self):
    super().__post_init__()
    self.check()  # errors at construction, not at the first call

  def check(self):
    name = "CrossViT"
    n = len(self.patch_sizes)
    if n < 2:
      raise UserError(f"{name}: needs at least 2 branches, got patch_sizes={self.patch_sizes}.")
    for field in ("img_scale", "embed_dims", "num_heads", "mlp_ratios", "branch_depths"):
      if len(tuple(getattr(self, field))) != n:
        raise UserError(f"{name}: {field}={tuple(getattr(self, field))} needs one entry "
                        f"per branch ({n}, as patch_sizes={tuple(self.patch_sizes)}).")
    for j, (d, h) in enumerate(zip(self.embed_dims, self.num_heads)):
      if d % h:
        raise UserError(f"{name} branch {j}: width {d} is not divisible by num_heads={h}.")
    if self.num_blocks < 1 or self.fusion_depth < 1 or min(self.branch_depths) < 0:
      raise UserError(f"{name}: num_blocks={self.num_blocks} and fusion_depth="
                      f"{self.fusion_depth} must be >= 1, branch_depths >= 0.")
    if self.pool not in ("cls", "gap"):
      raise UserError(f"{name}: pool must be 'cls' or 'gap', got {self.pool!r}.")
    if self.multi_conv:
      bad = [p for p in self.patch_sizes if p not in (12, 16)]
      if bad:
        raise UserError(f"{name}: the dagger conv patch embedding (multi_conv=True) exists "
                        f"for patch sizes 12 and 16 only, not {bad}.")
      if any(d % 4 for d in self.embed_dims):
        raise UserError(f"{name}: multi_conv needs widths divisible by 4, got "
                        f"{tuple(self.embed_dims)}.")
    sizes = branch_sizes(self.image_size, self.img_scale)
    if any(s <= 0 or s % p for s, p in zip(sizes, self.patch_sizes)):
      near = valid_image_sizes(self.patch_sizes, self.img_scale, self.image_size)
      raise UserError(
          f"{name}: image_size={self.image_size} gives branch inputs {sizes} "
          f"(img_scale={tuple(self.img_scale)}), which the patch embeddings "
          f"{tuple(self.patch_sizes)} cannot cut evenly. Nearest valid sizes: "
          f"{' or '.join(map(str, near))} (set model.image_size and input.image_size).")
    return sizes

  def feature_levels(self):
    """'feature_map': the first (small-patch) branch's tokens after its final
    norm, at stride patch_sizes[0] when that branch sees the full image
    (img_scale[0] == 1; models/features.py)."""
    if self.img_scale[0] != 1:
      return ()
    return (FeatureLevel("feature_map", self.patch_sizes[0], self.embed_dims[0]),)

  def layer_groups(self):
    """Every branch's embeddings, then the multi-scale blocks (models/features.py)."""
    n = len(self.patch_sizes)
    stem = tuple(f"{k}_{j}" for j in range(n) for k in ("patch_embed", "cls_token",
                                                          "pos_embed"))
    return (stem,) + tuple((f"block_{i}",) for i in range(self.num_blocks))

  @nn.compact
  def __call__(self, images, *, train: bool = False):
    sizes = self.check()
    deterministic = not train
    b, h, w, _ = images.shape
    if (h, w) != (self.image_size, self.image_size):
      raise UserError(f"CrossViT was built for {self.image_size}x{self.image_size} inputs "
                      f"(its position embeddings are learned per branch) but got {h}x{w}; "
                      f"set model.image_size={h} (valid sizes: see its error) or resize.")
    images = images.astype(self.dtype)
    out = {}
    sfx = lambda j: "" if j == 0 else f"_b{j}"
    xs = []
    for j, (size, p, d) in enumerate(zip(sizes, self.patch_sizes, self.embed_dims)):
      x = resize_bicubic_torch(images, (size, size))
      if self.multi_conv:
        x = ConvPatchEmbed(p, d, dtype=self.dtype, name=f"patch_embed_{j}")(x)
      else:
        x = PatchEmbed(p, d, dtype=self.dtype, name=f"patch_embed_{j}")(x)
      out["stem" + sfx(j)] = x
      gh, gw = x.shape[1:3]
      cls = self.param(f"cls_token_{j}", nn.initializers.normal(0.02), (1, 1, d))
      pe = self.param(f"pos_embed_{j}", nn.initializers.normal(0.02), (1, 1 + gh * gw, d))
      x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, d)).astype(x.dtype),
                           x.reshape(b, gh * gw, d)], axis=1) + pe.astype(x.dtype)
      xs.append(nn.Dropout(self.dropout)(x, deterministic=deterministic))
    grids = [out["stem" + sfx(j)].shape[1:3] for j in range(len(xs))]

    span = max(self.branch_depths)
    total = self.num_blocks * span
    rates = [self.drop_path_rate * i / max(total - 1, 1) for i in range(total)]
    for i in range(self.num_blocks):
      xs = MultiScaleBlock(
          tuple(self.embed_dims), tuple(self.branch_depths), tuple(self.num_heads),
          tuple(self.mlp_ratios), self.fusion_depth, qkv_bias=self.qkv_bias,
          dropout=self.dropout, attention_dropout=self.attention_dropout,
          drop_paths=tuple(rates[i * span:(i + 1) * span]) or (0.0,),
          layer_norm_eps=self.layer_norm_eps, dtype=self.dtype,
          name=f"block_{i}")(xs, deterministic)
      for j, x in enumerate(xs):
        out[f"stage_{i}" + sfx(j)] = x[:, 1:].reshape(b, *grids[j], -1)

    pooled, logits = [], []
    head_init = nn.initializers.zeros if self.head_zero_init else nn.initializers.lecun_normal()
    for j, x in enumerate(xs):
      x = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name=f"norm_{j}")(x)
      out["encoded" + sfx(j)] = x
      if j == 0:  # the declared feature level (models/features.py)
        out["feature_map"] = x[:, 1:].reshape(b, *grids[0], -1)
      pooled.append(x[:, 0] if self.pool == "cls" else jnp.mean(x[:, 1:], axis=1))
    out["pre_logits"] = jnp.concatenate(pooled, axis=-1)
    if not self.num_classes:
      return out["pre_logits"].astype(jnp.float32), out
    for j, x in enumerate(pooled):
      x = nn.Dropout(self.dropout)(x, deterministic=deterministic)
      logits.append(nn.Dense(self.num_classes, kernel_init=head_init, dtype=self.dtype,
                             name=f"head_{j}")(x))
      out[f"logits_{j}"] = logits[-1]
    out["logits"] = sum(logits) / len(logits)
    return out["logits"].astype(jnp.float32), out


# The paper's model configurations (Ti / S / B: K=3 encoders, N=1, M=4, L=1;
# widths (96, 192) / (192, 384) / (384, 768), MLP ratio 4; 9 / 15 / 18: M=3 /
# 5 / 6, MLP ratio 3), heads as in timm's released models; `multi_conv`: †.
# Parameter counts (tests/test_crossvit.py) equal timm's and are within 1% of
# the paper's (Ti 7.0M, S 26.7M, B 104.7M, 9 8.6M, 15 27.4M, 18 43.3M, 9† 8.8M,
# 15† 28.2M, 18† 44.3M).
CROSSVIT_SIZES = {
    "tiny": dict(embed_dims=(96, 192), num_heads=(3, 3), branch_depths=(1, 4),
                 mlp_ratios=(4.0, 4.0)),
    "small": dict(embed_dims=(192, 384), num_heads=(6, 6), branch_depths=(1, 4),
                  mlp_ratios=(4.0, 4.0)),
    "base": dict(embed_dims=(384, 768), num_heads=(12, 12), branch_depths=(1, 4),
                 mlp_ratios=(4.0, 4.0)),
    "9": dict(embed_dims=(128, 256), num_heads=(4, 4), branch_depths=(1, 3),
              mlp_ratios=(3.0, 3.0)),
    "15": dict(embed_dims=(192, 384), num_heads=(6, 6), branch_depths=(1, 5),
               mlp_ratios=(3.0, 3.0)),
    "18": dict(embed_dims=(224, 448), num_heads=(7, 7), branch_depths=(1, 6),
               mlp_ratios=(3.0, 3.0)),
}


def _register(size, dagger):
  def factory(**overrides):
    kw = dict(CROSSVIT_SIZES[size], multi_conv=dagger)
    kw.update(overrides)
    return CrossViT(**kw)
  tag = "_dagger" if dagger else ""
  factory.__doc__ = (f"CrossViT-{size}{'†' if dagger else ''} at 240x240 (small branch 240 px "
                     "/ patch 12, large branch 224 px / patch 16).")
  register_model(factory, name=f"crossvit_{size}{tag}_240")


for _size in CROSSVIT_SIZES:
  _register(_size, False)
for _size in ("9", "15", "18"):
  _register(_size, True)
