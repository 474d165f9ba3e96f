"""Masked autoencoders (He et al. 2021, "Masked Autoencoders Are Scalable
Vision Learners").

image -> patch embedding + fixed 2D sin-cos position embedding -> random
masking (keep 1 - mask_ratio of the patches, a per-sample shuffle by the
argsort of uniform noise) -> [class token] + visible patches -> ViT encoder
blocks (vit.py's) -> LayerNorm -> decoder: Dense to the decoder width, mask
tokens appended and the sequence un-shuffled, fixed sin-cos position
embedding, a few encoder blocks, LayerNorm, Dense to the p*p*C pixels of each
patch. The loss is the mean squared error on the masked patches only, against
the patch pixels or (`norm_pix_loss`) the pixels normalised per patch.

The encoder's parameters carry the names of a `VisionTransformer(pool='cls',
posemb='learn')`'s (`patch_embed`, `cls_token`, `pos_embedding`, `block_i`,
`norm`): a vitjax MAE checkpoint fine-tunes a ViT with `config.init_from`
(the decoder, under `decoder/`, is left out). The position embeddings are
stored as parameters, as in the reference implementation's state dict, so
that the ViT starts from them, but they never train here (stop_gradient).

`__call__(images, train=False, noise=None)` returns `(pred, out)`, pred the
[B, N, p*p*C] reconstruction of every patch. Masking happens when `noise`
([B, N] floats, e.g. for parity with HF) is given or when an RNG stream
'masking' (else 'dropout') is; then `out` has 'loss', 'patch_loss' [B, N],
'mask' [B, N] (1 = masked) and 'ids_restore'. Without either (a plain
`model.apply(variables, images)`, as feature extraction does) the encoder
sees every patch. `out` also has 'stem', 'block_i', 'encoded' (class token +
the encoded patches), 'pre_logits' (the class token), 'target' and, when
nothing is masked, 'feature_map'.
"""

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from vitjax.errors import UserError
from vitjax.models.features import FeatureLevel
from vitjax.models.layers import PatchEmbed, sincos_posemb_2d
from vitjax.models.registry import register_checkpoint_source, register_model
from vitjax.models.vit import VIT_SIZES, EncoderBlock, VisionTransformer


def patchify(images, patch_size: int):
  """[B, H, W, C] -> [B, N, p*p*C], each patch's pixels in (row, col, channel) order."""
  b, h, w, c = images.shape
  p = patch_size
  x = images.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(patches, grid, patch_size: int, channels: int = 3):
  """[B, N, p*p*C] -> [B, H, W, C] for a (h, w) patch grid (inverse of `patchify`)."""
  (gh, gw), p = grid, patch_size
  b = patches.shape[0]
  x = patches.reshape(b, gh, gw, p, p, channels).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, gh * p, gw * p, channels)


def mae_posemb(h: int, w: int, dim: int):
  """MAE's fixed position embedding: [1, 1 + h*w, dim], a zero row for the class token."""
  grid = sincos_posemb_2d(h, w, dim, endpoint=False)
  return jnp.concatenate([jnp.zeros((1, 1, dim), grid.dtype), grid], axis=1)


def random_masking(x, noise, len_keep: int):
  """Keeps the `len_keep` tokens of lowest noise per sample.

  Returns (kept tokens [B, len_keep, D] in noise order, mask [B, N] with 1 on
  the removed tokens, ids_restore [B, N] undoing the shuffle).
  """
  ids_shuffle = jnp.argsort(noise, axis=1)
  ids_restore = jnp.argsort(ids_shuffle, axis=1)
  kept = jnp.take_along_axis(x, ids_shuffle[:, :len_keep, None], axis=1)
  mask = (ids_restore >= len_keep).astype(jnp.float32)
  return kept, mask, ids_restore


def reconstruction_loss(pred, target, mask, norm_pix_loss: bool):
  """(mean loss over masked patches, per-patch MSE [B, N], the regression target)."""
  target = target.astype(jnp.float32)
  if norm_pix_loss:
    mean = jnp.mean(target, axis=-1, keepdims=True)
    var = jnp.var(target, axis=-1, keepdims=True, ddof=1)  # unbiased, as the paper's code
    target = (target - mean) / jnp.sqrt(var + 1e-6)
  patch_loss = jnp.mean(jnp.square(pred.astype(jnp.float32) - target), axis=-1)
  loss = jnp.sum(patch_loss * mask) / jnp.maximum(jnp.sum(mask), 1.0)
  return loss, patch_loss, target


def _fixed_posemb(module, name, h, w, dim, dtype):
  """A sin-cos position embedding kept as a parameter but never trained."""
  pe = module.param(name, lambda _: mae_posemb(h, w, dim))
  if pe.shape[1] != 1 + h * w:
    raise ValueError(f"{name} has {pe.shape[1]} tokens but the input gives 1+{h}x{w}; "
                     "an MAE pretrains at one resolution (use that image size).")
  return jax.lax.stop_gradient(pe).astype(dtype)


class MaeDecoder(nn.Module):
  """Encoded visible tokens + mask tokens -> predicted pixels of every patch."""
  hidden_size: int
  depth: int
  num_heads: int
  mlp_dim: int
  out_dim: int
  qkv_bias: bool = True
  layer_norm_eps: float = 1e-6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, ids_restore, grid):
    b, n = ids_restore.shape
    x = nn.Dense(self.hidden_size, dtype=self.dtype, name="embed")(x)
    mask_token = self.param("mask_token", nn.initializers.normal(stddev=0.02),
                            (1, 1, self.hidden_size))
    n_masked = n - (x.shape[1] - 1)
    tokens = jnp.concatenate(
        [x[:, 1:], jnp.broadcast_to(mask_token, (b, n_masked, self.hidden_size)).astype(x.dtype)],
        axis=1)
    tokens = jnp.take_along_axis(tokens, ids_restore[:, :, None], axis=1)  # un-shuffle
    x = jnp.concatenate([x[:, :1], tokens], axis=1)
    x = x + _fixed_posemb(self, "pos_embedding", *grid, self.hidden_size, x.dtype)
    for i in range(self.depth):
      x = EncoderBlock(self.num_heads, self.mlp_dim, qkv_bias=self.qkv_bias,
                       layer_norm_eps=self.layer_norm_eps, dtype=self.dtype,
                       name=f"block_{i}")(x)
    x = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name="norm")(x)
    return nn.Dense(self.out_dim, dtype=self.dtype, name="pred")(x)[:, 1:]


class MaskedAutoencoder(nn.Module):
  """MAE: a ViT encoder on the visible patches and a light pixel decoder.

  mask_ratio: the fraction of patches removed, in (0, 1) (paper: 0.75).
  norm_pix_loss: regress per-patch normalised pixels (the paper's best
    setting; off by default, as in HF's ViTMAEConfig).
  num_classes: unused (MAE has no classifier); accepted because the trainer
    passes the dataset's.
  """
  num_classes: int = 0
  patch_size: int = 16
  hidden_size: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  decoder_hidden_size: int = 512
  decoder_depth: int = 8
  decoder_num_heads: int = 16
  decoder_mlp_dim: int = 2048
  mask_ratio: float = 0.75
  norm_pix_loss: bool = False
  qkv_bias: bool = True
  drop_path_rate: float = 0.0
  layer_norm_eps: float = 1e-6
  dtype: Any = jnp.float32

  def __post_init__(self):
    if not 0.0 < self.mask_ratio < 1.0:
      raise UserError(
          f"mask_ratio={self.mask_ratio} must be in (0, 1), the fraction of patches "
          "removed: the paper uses 0.75 (try 0.5-0.9), e.g. --config.model.mask_ratio=0.75.")
    super().__post_init__()

  num_prefix_tokens = 1  # the class token

  def feature_levels(self):
    """'feature_map' (given when nothing is masked): patch tokens after the
    encoder's norm, at stride patch_size (models/features.py)."""
    return (FeatureLevel("feature_map", self.patch_size, self.hidden_size),)

  def layer_groups(self):
    """The encoder's embeddings and blocks; the decoder is the top layer."""
    return (("patch_embed", "cls_token", "pos_embedding"),) + tuple(
        (f"block_{i}",) for i in range(self.depth))

  @nn.compact
  def __call__(self, images, *, train: bool = False, noise: Optional[jax.Array] = None):
    out = {}
    images = images.astype(self.dtype)
    x = PatchEmbed(self.patch_size, self.hidden_size, dtype=self.dtype,
                   name="patch_embed")(images)
    out["stem"] = x
    b, h, w, d = x.shape
    n = h * w
    x = x.reshape(b, n, d)
    pe = _fixed_posemb(self, "pos_embedding", h, w, d, x.dtype)
    x = x + pe[:, 1:]

    if noise is None and (self.has_rng("masking") or self.has_rng("dropout")):
      noise = jax.random.uniform(
          self.make_rng("masking" if self.has_rng("masking") else "dropout"), (b, n))
    masked = noise is not None
    if masked:
      len_keep = int(n * (1 - self.mask_ratio))
      if len_keep < 1:
        raise UserError(
            f"mask_ratio={self.mask_ratio} keeps no patch of the {n} ({h}x{w}); use "
            f"mask_ratio <= {1 - 1 / n:.3f} or a smaller patch size.")
      if noise.shape != (b, n):
        raise ValueError(f"noise must be [batch, patches] = {(b, n)}, got {noise.shape}")
      x, mask, ids_restore = random_masking(x, noise, len_keep)
    else:
      mask = jnp.zeros((b, n), jnp.float32)
      ids_restore = jnp.broadcast_to(jnp.arange(n), (b, n))

    cls = self.param("cls_token", nn.initializers.normal(stddev=0.02), (1, 1, d))
    cls = jnp.broadcast_to(cls.astype(x.dtype) + pe[:, :1], (b, 1, d))
    x = jnp.concatenate([cls, x], axis=1)
    for i in range(self.depth):
      dpr = self.drop_path_rate * i / max(self.depth - 1, 1)
      x = EncoderBlock(self.num_heads, self.mlp_dim, drop_path=dpr, qkv_bias=self.qkv_bias,
                       layer_norm_eps=self.layer_norm_eps, dtype=self.dtype,
                       name=f"block_{i}")(x, not train)
      out[f"block_{i}"] = x
    x = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name="norm")(x)
    out["encoded"] = x
    out["pre_logits"] = x[:, 0]
    if not masked:
      out["feature_map"] = x[:, 1:].reshape(b, h, w, d)

    pred = MaeDecoder(self.decoder_hidden_size, self.decoder_depth, self.decoder_num_heads,
                      self.decoder_mlp_dim, self.patch_size ** 2 * images.shape[-1],
                      qkv_bias=self.qkv_bias, layer_norm_eps=self.layer_norm_eps,
                      dtype=self.dtype, name="decoder")(x, ids_restore, (h, w))
    pred = pred.astype(jnp.float32)
    loss, patch_loss, target = reconstruction_loss(
        pred, patchify(images, self.patch_size), mask, self.norm_pix_loss)
    out.update(mask=mask, ids_restore=ids_restore, target=target)
    if masked:
      out.update(loss=loss, patch_loss=patch_loss)
    return pred, out


# MAE paper, Sec. 4 / Appendix A.1: ViT-B/16, ViT-L/16 and ViT-H/14 encoders
# (ViT paper Table 1), and one decoder for all: 8 blocks, width 512 (16 heads
# and MLP 2048 in the authors' code).
MAE_DECODER = dict(decoder_hidden_size=512, decoder_depth=8, decoder_num_heads=16,
                   decoder_mlp_dim=2048)


def _register_mae(size, patch):
  def factory(**overrides):
    kw = dict(VIT_SIZES[size], patch_size=patch, **MAE_DECODER)
    kw.update(overrides)
    return MaskedAutoencoder(**kw)
  factory.__doc__ = f"MAE pretraining model: ViT-{size}/{patch} encoder, 8x512 decoder."
  register_model(factory, name=f"mae_vit_{size}_patch{patch}")


for _size, _patch in (("base", 16), ("large", 16), ("huge", 14)):
  _register_mae(_size, _patch)


# Fine-tuning: an MAE's encoder (same parameter names) loads into a ViT; the
# decoder is left out.
register_checkpoint_source(VisionTransformer, MaskedAutoencoder)


@register_model
def mae_vit_quickstart(**overrides):
  """A small MAE for 16x16 digits: the encoder of configs/quickstart.py's ViT
  (patch 4, width 64, 4 blocks, 4 heads), a 2-block width-64 decoder."""
  kw = dict(patch_size=4, hidden_size=64, depth=4, num_heads=4, mlp_dim=128,
            decoder_hidden_size=64, decoder_depth=2, decoder_num_heads=4, decoder_mlp_dim=128)
  kw.update(overrides)
  return MaskedAutoencoder(**kw)
