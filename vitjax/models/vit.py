"""Vision Transformer (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words")
and DeiT (Touvron et al. 2021, "Training data-efficient image transformers").

image -> patch embedding -> [class token (+ distillation token)] + position
embedding -> `depth` pre-norm encoder blocks -> final LayerNorm -> pooling
(class token or global average) -> linear head.

`__call__(images, train=False)` returns `(logits, out)`; `out` holds named
intermediates: 'stem' (patch grid), 'block_{i}', 'encoded', 'feature_map'
([B, h, w, D] patch tokens), 'pre_logits', and for DeiT 'logits_cls' and
'logits_dist' (the two heads; `logits` is their mean, as at DeiT inference).

`mask` ([B, h, w] bool over the patch grid, for masked-image modelling such
as SimMIM): masked patch embeddings are replaced by a learned `mask_token`
(created only when a mask is given) before the position embedding is added.
"""

from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

from vitjax.models.layers import (Attention, DropPath, Mlp, PatchEmbed, apply_mask_token,
                                  resample_posemb,
                                  sincos_posemb_2d)
from vitjax.compress.tome import merge_tokens
from vitjax.errors import UserError
from vitjax.models.features import FeatureLevel
from vitjax.models.registry import register_checkpoint_fix, register_model


class EncoderBlock(nn.Module):
  """Pre-norm transformer block: x + Attn(LN(x)), then x + MLP(LN(x)).

  head_dim: per-head width when the heads do not split the width evenly
    (a head-pruned layer, compress/prune.py). tome_r > 0: merge that many
    tokens between attention and MLP (compress/tome.py); the call then takes
    and returns the token sizes: (x, size) -> (x, size).
  """
  num_heads: int
  mlp_dim: int
  dropout: float = 0.0
  attention_dropout: float = 0.0
  drop_path: float = 0.0
  qkv_bias: bool = True
  layer_norm_eps: float = 1e-6
  dtype: Any = jnp.float32
  attention_impl: str = "einsum"
  head_dim: Optional[int] = None
  tome_r: int = 0
  num_prefix: int = 1

  @nn.compact
  def __call__(self, x, deterministic: bool = True, size=None):
    y = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name="norm1")(x)
    attn = Attention(self.num_heads, qkv_bias=self.qkv_bias, dtype=self.dtype,
                     attention_dropout=self.attention_dropout, dropout=self.dropout,
                     impl=self.attention_impl, head_dim=self.head_dim, name="attn")
    if self.tome_r:
      # Proportional attention: a token standing for s patches gets log s.
      bias = jnp.log(size.astype(jnp.float32))[:, None, None, :]
      y, keys = attn(y, deterministic, bias=bias, return_keys=True)
      x = x + DropPath(self.drop_path)(y, deterministic)
      x, size = merge_tokens(x, size, keys.mean(axis=2), self.tome_r, self.num_prefix)
      y = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name="norm2")(x)
      y = Mlp(self.mlp_dim, dropout=self.dropout, dtype=self.dtype, name="mlp")(y, deterministic)
      return x + DropPath(self.drop_path)(y, deterministic), size
    y = attn(y, deterministic)
    x = x + DropPath(self.drop_path)(y, deterministic)
    y = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name="norm2")(x)
    y = Mlp(self.mlp_dim, dropout=self.dropout, dtype=self.dtype, name="mlp")(y, deterministic)
    return x + DropPath(self.drop_path)(y, deterministic)


class ScanBlock(nn.Module):
  """One EncoderBlock as the step of `nn.scan` over the blocks (scan_blocks=True):
  (x, drop-path rate) -> (x, x); the rate is a scanned input since it grows with depth."""
  block_kwargs: Any
  deterministic: bool = True

  @nn.compact
  def __call__(self, x, rate):
    x = EncoderBlock(**self.block_kwargs, drop_path=rate, name="block")(x, self.deterministic)
    return x, x


class VisionTransformer(nn.Module):
  """ViT / DeiT classifier over NHWC images.

  pool: 'cls' (class token) or 'gap' (mean of the patch tokens).
  posemb: 'learn' (a parameter shaped by the input seen at init; resample it
    with `layers.resample_posemb` to fine-tune at another resolution) or
    'sincos2d' (fixed, computed for any input size).
  fc_norm: with 'gap', apply the final LayerNorm after pooling (timm layout)
    instead of before it (big_vision layout).
  distilled: DeiT's extra distillation token and second head.
  posemb_interpolate: a learned posemb is resampled at call time to an input
    of another patch grid instead of refused (DINO's multi-crop, dense heads
    on images of any size), exactly as HF's `interpolate_pos_encoding=True`:
    PyTorch bicubic (a = -0.75, align_corners=False) from the stored square
    grid. A side the patch size does not divide is floored (the strided
    patch conv drops the remainder, as HF and timm).
  num_classes: 0 gives no head (logits are the pre-logits).
  attention_impl: how attention is computed ('einsum', 'fused', 'xla',
    'cudnn', 'chunked', 'auto'; see layers/attention.py); same parameters
    and results, different speed and memory.
  head_counts: '' (every block has num_heads heads) or comma-separated heads
    per block, e.g. '3,2,4,3', each of width hidden_size // num_heads (a
    head-pruned model, vitjax/compress/prune.py).
  tome_r: token merging at inference (ToMe, vitjax/compress/tome.py): r
    tokens merged in every block; 0 is the plain model. 'feature_map' is
    then left out (the tokens no longer form a grid).
  remat: recompute each block's activations in the backward pass instead of
    keeping them (same losses, less activation memory where the compiler
    keeps the saving; see experiments/remat_memory.md).
  scan_blocks: run the blocks as one `nn.scan` loop, parameters stacked under
    'blocks/block' with a leading depth axis (one block compiled instead of
    `depth`; with remat the backward pass recomputes one block at a time,
    which also holds on XLA:CPU). Checkpoints of the two layouts do not mix.
  """
  num_classes: int = 1000
  patch_size: int = 16
  hidden_size: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  pool: str = "cls"
  posemb: str = "learn"
  posemb_interpolate: bool = False
  fc_norm: bool = False
  distilled: bool = False
  representation_size: Optional[int] = None
  qkv_bias: bool = True
  dropout: float = 0.0
  attention_dropout: float = 0.0
  drop_path_rate: float = 0.0
  layer_norm_eps: float = 1e-6
  head_zero_init: bool = True
  remat: bool = False
  dtype: Any = jnp.float32
  attention_impl: str = "einsum"
  head_counts: str = ""
  tome_r: int = 0
  scan_blocks: bool = False

  def feature_levels(self):
    """'feature_map': the patch tokens after the final norm, at stride
    patch_size (none with token merging, tome_r > 0; models/features.py)."""
    if self.tome_r:
      return ()
    return (FeatureLevel("feature_map", self.patch_size, self.hidden_size),)

  def layer_groups(self):
    """The patch / token embeddings, then every block (models/features.py)."""
    if self.scan_blocks:
      raise UserError("A ViT with scan_blocks=True stacks its blocks in one parameter, so "
                      "layer-wise lr decay / freeze_depth cannot tell them apart; set "
                      "--config.model.scan_blocks=False.")
    stem = ("patch_embed", "cls_token", "dist_token", "pos_embedding", "mask_token")
    return (stem,) + tuple((f"block_{i}",) for i in range(self.depth))

  def block_heads(self):
    """Heads of each block (head_counts parsed and checked)."""
    if not self.head_counts:
      return [self.num_heads] * self.depth
    try:
      heads = [int(h) for h in str(self.head_counts).split(",")]
    except ValueError:
      heads = []
    if len(heads) != self.depth or min(heads) < 1:
      raise UserError(f"model.head_counts={self.head_counts!r}: give {self.depth} "
                      "comma-separated head counts >= 1 (one per block), e.g. "
                      f"{','.join([str(self.num_heads)] * self.depth)!r}, or '' for "
                      f"num_heads={self.num_heads} everywhere.")
    return heads

  def setup_checks(self):
    if self.pool not in ("cls", "gap"):
      raise ValueError(f"pool must be 'cls' or 'gap', got {self.pool!r}")
    if self.posemb not in ("learn", "sincos2d"):
      raise ValueError(f"posemb must be 'learn' or 'sincos2d', got {self.posemb!r}")
    if self.distilled and self.pool != "cls":
      raise ValueError("a distilled (DeiT) model needs pool='cls'")
    if self.scan_blocks and (self.head_counts or self.tome_r):
      raise UserError("model.scan_blocks=True needs identical blocks: it cannot be combined "
                      f"with head_counts={self.head_counts!r} or tome_r={self.tome_r}.")
    if self.tome_r < 0:
      raise UserError(f"model.tome_r={self.tome_r}: tokens merged per block must be >= 0 "
                      "(0 disables token merging).")

  @property
  def num_prefix_tokens(self) -> int:
    return (self.pool == "cls") + bool(self.distilled)

  @nn.compact
  def __call__(self, images, *, train: bool = False, mask=None):
    self.setup_checks()
    out = {}
    deterministic = not train
    x = PatchEmbed(self.patch_size, self.hidden_size, dtype=self.dtype, remainder="floor",
                   name="patch_embed")(images.astype(self.dtype))
    out["stem"] = x
    b, h, w, d = x.shape
    x = x.reshape(b, h * w, d)
    if mask is not None:
      x = apply_mask_token(self, x, mask.reshape(b, h * w))

    prefix = []
    if self.pool == "cls":
      prefix.append(self.param("cls_token", nn.initializers.zeros, (1, 1, d)))
    if self.distilled:
      prefix.append(self.param("dist_token", nn.initializers.zeros, (1, 1, d)))
    prefix = [jnp.broadcast_to(t, (b, 1, d)).astype(x.dtype) for t in prefix]
    n_prefix = len(prefix)

    if self.posemb == "learn":
      # Position embedding covers the prefix tokens too (ViT / DeiT / HF / timm).
      if self.has_variable("params", "pos_embedding"):  # checked here, not by flax,
        pe = self.get_variable("params", "pos_embedding")  # to say how to fix it
      else:
        pe = self.param("pos_embedding", nn.initializers.normal(stddev=0.02),
                        (1, n_prefix + h * w, d))
      if pe.shape[1] != n_prefix + h * w and self.posemb_interpolate:
        pe = resample_posemb(pe, (h, w), n_prefix, method="bicubic_torch")
      if pe.shape[1] != n_prefix + h * w:
        raise UserError(
            f"pos_embedding has {pe.shape[1]} tokens but the {images.shape[1]}x"
            f"{images.shape[2]} input gives {n_prefix}+{h}x{w}: set "
            "--config.model.posemb_interpolate=True to resample it at call time (HF's "
            "interpolate_pos_encoding), or resample the checkpoint with "
            "vitjax.models.layers.resample_posemb (vitjax.checkpoint does this when "
            "fine-tuning at a new resolution).")
      x = jnp.concatenate(prefix + [x], axis=1) + pe.astype(x.dtype)
    else:
      x = x + sincos_posemb_2d(h, w, d).astype(x.dtype)
      x = jnp.concatenate(prefix + [x], axis=1)
    x = nn.Dropout(self.dropout)(x, deterministic=deterministic)

    block_cls = nn.remat(EncoderBlock, static_argnums=(2,)) if self.remat else EncoderBlock
    heads = self.block_heads()
    pruned = bool(self.head_counts)
    size = jnp.ones(x.shape[:2], jnp.float32) if self.tome_r else None
    common = dict(mlp_dim=self.mlp_dim, dropout=self.dropout,
                  attention_dropout=self.attention_dropout, qkv_bias=self.qkv_bias,
                  layer_norm_eps=self.layer_norm_eps, dtype=self.dtype,
                  attention_impl=self.attention_impl, num_prefix=n_prefix)
    if self.scan_blocks:
      step = nn.remat(ScanBlock, prevent_cse=False) if self.remat else ScanBlock
      rates = self.drop_path_rate * jnp.arange(self.depth) / max(self.depth - 1, 1)
      x, xs = nn.scan(step, variable_axes={"params": 0},
                      split_rngs={"params": True, "dropout": True}, length=self.depth)(
                          dict(common, num_heads=self.num_heads), deterministic,
                          name="blocks")(x, rates)
      out.update({f"block_{i}": xs[i] for i in range(self.depth)})
    for i in range(0 if self.scan_blocks else self.depth):
      dpr = self.drop_path_rate * i / max(self.depth - 1, 1)
      block = block_cls(heads[i], drop_path=dpr,
                        head_dim=d // self.num_heads if pruned else None,
                        tome_r=self.tome_r, name=f"block_{i}", **common)
      if self.tome_r:
        x, size = block(x, deterministic, size)
      else:
        x = block(x, deterministic)
      out[f"block_{i}"] = x

    norm = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype,
                        name="fc_norm" if (self.pool == "gap" and self.fc_norm) else "norm")
    def patch_mean(t):  # merged tokens weigh as many patches as they stand for
      if size is None:
        return jnp.mean(t, axis=1)
      s = size[:, -t.shape[1]:, None].astype(t.dtype)
      return jnp.sum(t * s, axis=1) / jnp.sum(s, axis=1)
    if self.pool == "gap" and self.fc_norm:
      out["encoded"] = x
      pooled = norm(patch_mean(x))
    else:
      x = norm(x)
      out["encoded"] = x
      pooled = x[:, 0] if self.pool == "cls" else patch_mean(x[:, n_prefix:])
    if not self.tome_r:
      out["feature_map"] = x[:, n_prefix:].reshape(b, h, w, d)

    if self.representation_size:
      pooled = nn.tanh(nn.Dense(self.representation_size, dtype=self.dtype,
                                name="pre_logits")(pooled))
    out["pre_logits"] = pooled
    if not self.num_classes:
      return pooled, out

    head_init = nn.initializers.zeros if self.head_zero_init else nn.initializers.xavier_uniform()
    logits = nn.Dense(self.num_classes, kernel_init=head_init, dtype=self.dtype,
                      name="head")(pooled)
    if self.distilled:
      dist = x[:, 1]
      logits_dist = nn.Dense(self.num_classes, kernel_init=head_init, dtype=self.dtype,
                             name="head_dist")(dist)
      out["logits_cls"], out["logits_dist"] = logits, logits_dist
      out["pre_logits_dist"] = dist
      logits = (logits + logits_dist) / 2
    out["logits"] = logits
    return logits.astype(jnp.float32), out


@register_checkpoint_fix(VisionTransformer)
def fix_pos_embedding(key, value, shape, model):
  """Fine-tuning at a new resolution: a learned position embedding of another
  grid is resampled to the model's grid, its prefix tokens (class / distillation
  token, `model.num_prefix_tokens`, or 1 for pool='cls') kept as they are."""
  if not key.endswith("pos_embedding") or len(shape) != 3 or value.shape[-1] != shape[-1]:
    return None
  prefix = getattr(model, "num_prefix_tokens", None)
  if prefix is None:
    prefix = int(getattr(model, "pool", "cls") == "cls")
  side = int(round((shape[1] - prefix) ** 0.5))
  if side * side != shape[1] - prefix:
    return None
  return resample_posemb(value, (side, side), prefix)


# Widths, depths, MLP widths and heads: ViT paper Table 1 (B, L, H),
# DeiT Table 1 / AugReg (Ti, S) and Scaling ViTs (Zhai et al. 2022) Table 2 (g).
VIT_SIZES = {
    "tiny": dict(hidden_size=192, depth=12, mlp_dim=768, num_heads=3),
    "small": dict(hidden_size=384, depth=12, mlp_dim=1536, num_heads=6),
    "base": dict(hidden_size=768, depth=12, mlp_dim=3072, num_heads=12),
    "large": dict(hidden_size=1024, depth=24, mlp_dim=4096, num_heads=16),
    "huge": dict(hidden_size=1280, depth=32, mlp_dim=5120, num_heads=16),
    "giant": dict(hidden_size=1408, depth=40, mlp_dim=6144, num_heads=16),
}
SHORT_NAMES = {"Ti": "tiny", "S": "small", "B": "base", "L": "large", "H": "huge",
               "g": "giant"}


def vit_kwargs(variant: str):
  """'B/16' -> the keyword arguments of ViT-B/16 (big_vision style)."""
  size, patch = variant.split("/")
  return dict(VIT_SIZES[SHORT_NAMES.get(size, size)], patch_size=int(patch))


def _register_vit(size, patch):
  def factory(**overrides):
    kw = dict(VIT_SIZES[size], patch_size=patch)
    kw.update(overrides)
    return VisionTransformer(**kw)
  factory.__doc__ = f"ViT-{size}/{patch} at 224x224, class token, learned posemb."
  register_model(factory, name=f"vit_{size}_patch{patch}_224")


for _size in VIT_SIZES:
  for _patch in (8, 14, 16, 32):
    _register_vit(_size, _patch)


def _register_deit(size, distilled):
  def factory(**overrides):
    kw = dict(VIT_SIZES[size], patch_size=16, distilled=distilled)
    kw.update(overrides)
    return VisionTransformer(**kw)
  tag = "_distilled" if distilled else ""
  factory.__doc__ = f"DeiT-{size}{tag}/16: ViT trained the DeiT way" + (
      ", with the distillation token and head." if distilled else ".")
  register_model(factory, name=f"deit_{size}{tag}_patch16_224")


for _size in ("tiny", "small", "base"):
  for _distilled in (False, True):
    _register_deit(_size, _distilled)


@register_model
def vit_quickstart(**overrides):
  """A small ViT for 16x16 inputs such as the upsampled digits."""
  kw = dict(patch_size=4, hidden_size=128, depth=4, mlp_dim=256, num_heads=4,
            num_classes=10)
  kw.update(overrides)
  return VisionTransformer(**kw)
