"""LV-ViT (Jiang et al. 2021, "All Tokens Matter: Token Labeling for Training
Better Vision Transformers").

image -> 4-layer convolutional patch embedding (conv 7x7/2 -> BN -> ReLU,
two conv 3x3 -> BN -> ReLU, then a (p/2)x(p/2) stride-p/2 projection: total
stride p = patch_size) -> [class token] + learned position embedding ->
`depth` pre-norm blocks with residual scaling -> final LayerNorm -> two
heads: `head` on the class token and `aux_head` on every patch token (the
dense per-token logits that token labeling supervises).

Residual scaling (paper Sec. 3.1, "skip_lam"): each branch is divided by
lam before it is added, x <- x + F(LN(x)) / lam. Since LayerNorm does not see
a scale (LN(lam x; eps lam^2) = LN(x; eps)), this block equals the plain ViT
block applied to lam x and divided by lam:
    lvvit_block(x) = vit.EncoderBlock(eps = eps lam^2)(lam x) / lam,
which is how it is computed here (the plain block, parameters named as ViT's).

Prediction at inference (official code): logits = head(cls) + 0.5 *
max over tokens of aux_head(tokens); `aux_weight` is the 0.5.

MixToken (paper Sec. 3.3): CutMix on the patch-token grid, after the stem
and before the blocks, mixing every example with the batch in reverse order
(as the official code, `x.flip(0)`); after the blocks the token outputs of
the box are swapped back, so every token's logits again belong to the image
that patch came from (its dense target is unmixed), while the class token
sees the mixture (its target is lam * y + (1 - lam) * y_reversed with lam =
1 - box area / tokens). Pass `mix_box=(y0, x0, y1, x1)` in token units
(`rand_token_box` draws one) to `__call__`; training only.

`__call__(images, *, train=False, mix_box=None)` returns `(logits, out)`;
`out` holds 'stem' (the token grid before the blocks, NHWC), 'block_{i}',
'encoded', 'feature_map' / 'stage_0' ([B, h, w, D] patch tokens after the
final norm), 'pre_logits' (class token), 'logits_cls', 'token_logits'
([B, h*w, classes]) and 'logits'.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vitjax.errors import UserError
from vitjax.models.features import FeatureLevel
from vitjax.models.layers import ConvBN, PatchEmbed, resample_posemb
from vitjax.models.registry import register_model
from vitjax.models.vit import EncoderBlock

_TRUNC = nn.initializers.truncated_normal(stddev=0.02)


def _nearest_multiples(size: int, p: int) -> str:
  lo, hi = size // p * p, (size // p + 1) * p
  return " or ".join(str(s) for s in (lo, hi) if s > 0)


def check_image_size(size: int, patch_size: int, what: str = "image_size"):
  """Raises UserError unless the conv stem (stride 2, then patch_size / 2)
  divides `size` exactly."""
  if patch_size < 2 or patch_size % 2:
    raise UserError(f"LV-ViT: patch_size={patch_size} must be even (the stem is a stride-2 "
                    "conv followed by a patch_size/2 projection), e.g. 16 or 8.")
  if size <= 0 or size % patch_size:
    raise UserError(
        f"LV-ViT: {what}={size} is not divisible by the stem stride {patch_size} "
        f"(conv 7x7 stride 2, then a {patch_size // 2}x{patch_size // 2} stride-"
        f"{patch_size // 2} projection). Use {_nearest_multiples(size, patch_size)} "
        "(set via --config.input.image_size and --config.model.image_size).")


def token_box_mask(box, h: int, w: int):
  """[h, w, 1] bool mask of the tokens inside box = (y0, x0, y1, x1) (ends excluded)."""
  y0, x0, y1, x1 = (jnp.asarray(v) for v in box)
  ys, xs = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
  return ((ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1))[..., None]


def mix_tokens(x, box):
  """MixToken on an NHWC token grid: inside `box`, example i takes the tokens
  of example B-1-i. Its own inverse (used again to swap the outputs back)."""
  return jnp.where(token_box_mask(box, x.shape[1], x.shape[2]), x[::-1], x)


def box_lam(box, h: int, w: int):
  """The weight of each example's own label after mixing: 1 - box area / (h w)."""
  y0, x0, y1, x1 = (jnp.asarray(v, jnp.float32) for v in box)
  return 1.0 - (y1 - y0) * (x1 - x0) / (h * w)


def rand_token_box(rng, h: int, w: int, alpha: float = 1.0):
  """A random MixToken box as in CutMix (official `rand_bbox`): lam ~
  Beta(alpha, alpha), sides floor(side * sqrt(1 - lam)), centre uniform,
  clipped to the grid. Returns int32 [4] = (y0, x0, y1, x1)."""
  k_lam, k_y, k_x = jax.random.split(rng, 3)
  lam = jax.random.beta(k_lam, alpha, alpha)
  cut = jnp.sqrt(1.0 - lam)
  cut_h = jnp.floor(h * cut).astype(jnp.int32)
  cut_w = jnp.floor(w * cut).astype(jnp.int32)
  cy = jax.random.randint(k_y, (), 0, h)
  cx = jax.random.randint(k_x, (), 0, w)
  return jnp.stack([jnp.clip(cy - cut_h // 2, 0, h), jnp.clip(cx - cut_w // 2, 0, w),
                    jnp.clip(cy + cut_h // 2, 0, h), jnp.clip(cx + cut_w // 2, 0, w)])


class ConvStem(nn.Module):
  """The 4-layer patch embedding: three conv-BN-ReLU (7x7/2, 3x3, 3x3, width
  `hidden_dim`) and a non-overlapping (p/2)x(p/2) projection to `embed_dim`."""
  embed_dim: int
  patch_size: int = 16
  hidden_dim: int = 64
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    for i, k in enumerate((7, 3, 3)):
      x = ConvBN(self.hidden_dim, k, strides=2 if i == 0 else 1, act=nn.relu,
                 dtype=self.dtype, name=f"conv{i + 1}")(x, train)
    return PatchEmbed(self.patch_size // 2, self.embed_dim, dtype=self.dtype,
                      name="proj")(x)


class LVViT(nn.Module):
  """LV-ViT classifier over NHWC images, with dense per-token logits.

  image_size: the grid the position embedding is stored for (other inputs
    divisible by patch_size get it resampled bilinearly).
  skip_lam: residual scaling (1 for LV-ViT-T, 2 for S / M, 3 for L).
  aux_weight: weight of the max-over-tokens aux logits in the prediction.
  num_classes: 0 gives no heads (logits are the pre-logits).
  """
  num_classes: int = 1000
  image_size: int = 224
  patch_size: int = 16
  stem_dim: int = 64
  hidden_size: int = 384
  depth: int = 16
  num_heads: int = 6
  mlp_ratio: float = 3.0
  skip_lam: float = 2.0
  qkv_bias: bool = False
  dropout: float = 0.0
  attention_dropout: float = 0.0
  drop_path_rate: float = 0.0
  layer_norm_eps: float = 1e-5  # torch nn.LayerNorm default, as the official code
  aux_weight: float = 0.5
  dtype: Any = jnp.float32

  def __post_init__(self):
    super().__post_init__()
    check_image_size(self.image_size, self.patch_size)
    if self.hidden_size % self.num_heads:
      raise UserError(f"LV-ViT: hidden_size={self.hidden_size} is not divisible by "
                      f"num_heads={self.num_heads}.")
    if self.skip_lam <= 0:
      raise UserError(f"LV-ViT: skip_lam={self.skip_lam} must be > 0 (1 = no scaling).")

  def feature_levels(self):
    """'feature_map' (= 'stage_0'): patch tokens after the final norm, at
    stride patch_size (models/features.py)."""
    return (FeatureLevel("feature_map", self.patch_size, self.hidden_size),)

  def layer_groups(self):
    """The conv stem and token embeddings, then every block (models/features.py)."""
    return (("patch_embed", "cls_token", "pos_embedding"),) + tuple(
        (f"block_{i}",) for i in range(self.depth))

  @nn.compact
  def __call__(self, images, *, train: bool = False, mix_box=None):
    b, h, w, _ = images.shape
    for what, size in (("input height", h), ("input width", w)):
      check_image_size(size, self.patch_size, what)
    det = not train
    out = {}
    x = ConvStem(self.hidden_size, self.patch_size, self.stem_dim, dtype=self.dtype,
                 name="patch_embed")(images.astype(self.dtype), train)
    if mix_box is not None:
      x = mix_tokens(x, mix_box)
    out["stem"] = x
    _, gh, gw, d = x.shape

    cls = self.param("cls_token", _TRUNC, (1, 1, d))
    native = self.image_size // self.patch_size
    pos = self.param("pos_embedding", _TRUNC, (1, 1 + native * native, d))
    pos = resample_posemb(pos, (gh, gw), num_prefix_tokens=1, old_grid=(native, native))
    x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, d)).astype(x.dtype),
                         x.reshape(b, gh * gw, d)], axis=1) + pos.astype(x.dtype)
    x = nn.Dropout(self.dropout)(x, deterministic=det)

    lam = self.skip_lam
    for i in range(self.depth):
      dpr = self.drop_path_rate * i / max(self.depth - 1, 1)
      block = EncoderBlock(self.num_heads, int(d * self.mlp_ratio), dropout=self.dropout,
                           attention_dropout=self.attention_dropout, drop_path=dpr,
                           qkv_bias=self.qkv_bias, layer_norm_eps=self.layer_norm_eps * lam ** 2,
                           dtype=self.dtype, name=f"block_{i}")
      x = block(x * lam, det) / lam if lam != 1 else block(x, det)  # x + F(LN(x)) / lam
      out[f"block_{i}"] = x

    x = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name="norm")(x)
    out["encoded"] = x
    out["feature_map"] = out["stage_0"] = x[:, 1:].reshape(b, gh, gw, d)
    out["pre_logits"] = x[:, 0]
    if not self.num_classes:
      return x[:, 0], out

    logits_cls = nn.Dense(self.num_classes, kernel_init=_TRUNC, dtype=self.dtype,
                          name="head")(x[:, 0])
    tokens = nn.Dense(self.num_classes, kernel_init=_TRUNC, dtype=self.dtype,
                      name="aux_head")(x[:, 1:])
    if mix_box is not None:  # swap the box back: token logits of the image each patch came from
      tokens = mix_tokens(tokens.reshape(b, gh, gw, -1), mix_box).reshape(b, gh * gw, -1)
      logits = logits_cls  # the mixed image's prediction is its class token's
    else:
      logits = logits_cls + self.aux_weight * jnp.max(tokens, axis=1)
    out["logits_cls"], out["token_logits"], out["logits"] = logits_cls, tokens, logits
    return logits.astype(jnp.float32), out


# Paper Table (model settings) and the official README/code (params counted
# with both heads, 1000 classes, 224x224): T 8.53M, S 26.15M, M 55.83M.
LVVIT_SIZES = {
    "t": dict(hidden_size=240, depth=12, num_heads=4, mlp_ratio=3.0, skip_lam=1.0),
    "s": dict(hidden_size=384, depth=16, num_heads=6, mlp_ratio=3.0, skip_lam=2.0),
    "m": dict(hidden_size=512, depth=20, num_heads=8, mlp_ratio=3.0, skip_lam=2.0),
}


def _register(size, image_size):
  def factory(**overrides):
    kw = dict(LVVIT_SIZES[size], image_size=image_size)
    kw.update(overrides)
    return LVViT(**kw)
  factory.__doc__ = f"LV-ViT-{size.upper()} at {image_size}x{image_size}."
  register_model(factory, name=f"lvvit_{size}" + ("" if image_size == 224 else f"_{image_size}"))


for _size in LVVIT_SIZES:
  _register(_size, 224)
_register("s", 384)
_register("m", 384)
