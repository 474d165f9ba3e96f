"""DINO's student / teacher network (Caron et al. 2021, "Emerging Properties in
Self-Supervised Vision Transformers"): a ViT backbone and the DINO head.

image crop (any size that is a multiple of the patch size: the learned
position embedding is resampled to the crop's grid, `posemb_interpolate`) ->
ViT (vit.py's, no classifier) -> class token -> head: 3-layer MLP
(hidden 2048, GELU) to a 256-d bottleneck -> L2 normalisation -> a
weight-normalised linear layer to `out_dim` (65536) logits with its norm g
fixed to 1 (the paper's `norm_last_layer`: each output unit is a unit vector,
so the logits are cosine similarities).

The backbone's parameters carry a `VisionTransformer`'s names at the top
level (`patch_embed`, `cls_token`, `pos_embedding`, `block_i`, `norm`), the
head lives under `dino_head/`: a DINO checkpoint is probed
(vitjax.tools.probe), drawn (vitjax.tools.attention) and fine-tuned
(`config.init_from`) as a ViT. `__call__(images, train=False, head=True)`
returns (head logits [B, out_dim], out) with the ViT's `out` ('pre_logits'
is the class token); `head=False` returns the class token as the first value.
The training itself (teacher, centering, multi-crop) is vitjax/tasks/dino.py.
"""

import flax.linen as nn
import jax.numpy as jnp

from vitjax.errors import UserError
from vitjax.models.registry import register_model
from vitjax.models.vit import VIT_SIZES, VisionTransformer

_TRUNC = nn.initializers.truncated_normal(stddev=0.02)


class WeightNormDense(nn.Module):
  """y = x @ (v / ||v||): weight normalisation with the gain g fixed to 1.

  `v` is [in, out]; each output unit's weight vector (a column) has norm 1.
  """
  features: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    v = self.param("kernel", _TRUNC, (x.shape[-1], self.features))
    w = v / jnp.maximum(jnp.linalg.norm(v, axis=0, keepdims=True), 1e-12)
    return x.astype(self.dtype) @ w.astype(self.dtype)


class DinoHead(nn.Module):
  """MLP (n layers, GELU) -> bottleneck -> L2 norm -> weight-normalised layer."""
  out_dim: int = 65536
  hidden_dim: int = 2048
  bottleneck_dim: int = 256
  num_layers: int = 3
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    dims = [self.hidden_dim] * (self.num_layers - 1) + [self.bottleneck_dim]
    for i, d in enumerate(dims):
      x = nn.Dense(d, kernel_init=_TRUNC, dtype=self.dtype, name=f"mlp_{i}")(x)
      if i < len(dims) - 1:
        x = nn.gelu(x, approximate=False)
    x = x.astype(jnp.float32)
    x = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    return WeightNormDense(self.out_dim, name="last_layer")(x)


class DinoViT(VisionTransformer):
  """A ViT (no classifier) with the DINO head on its class token."""
  out_dim: int = 65536
  head_hidden_dim: int = 2048
  head_bottleneck_dim: int = 256
  head_layers: int = 3
  posemb_interpolate: bool = True

  def __post_init__(self):
    if self.out_dim < 1 or self.head_hidden_dim < 1 or self.head_bottleneck_dim < 1:
      raise UserError(
          f"DINO head out_dim={self.out_dim}, head_hidden_dim={self.head_hidden_dim}, "
          f"head_bottleneck_dim={self.head_bottleneck_dim}: all must be >= 1 (paper: 65536, "
          "2048, 256; a small run: e.g. --config.model.out_dim=1024).")
    if self.head_layers < 1:
      raise UserError(f"DINO head_layers={self.head_layers} must be >= 1 (paper: 3).")
    if self.num_classes or self.pool != "cls":
      raise UserError("A DINO model has no classifier (num_classes=0) and reads the class "
                      f"token (pool='cls'); got num_classes={self.num_classes}, "
                      f"pool={self.pool!r}.")
    super().__post_init__()

  @nn.compact
  def __call__(self, images, *, train: bool = False, head: bool = True):
    feats, out = super().__call__(images, train=train)
    if not head:
      return feats, out
    z = DinoHead(self.out_dim, self.head_hidden_dim, self.head_bottleneck_dim,
                 self.head_layers, dtype=self.dtype, name="dino_head")(feats)
    return z, out


def _register_dino(size, patch):
  def factory(**overrides):
    overrides.pop("num_classes", None)  # the trainer passes the dataset's; DINO has none
    return DinoViT(**dict(VIT_SIZES[size], patch_size=patch, num_classes=0, **overrides))
  factory.__doc__ = (f"DINO ViT-{size}/{patch}: the backbone and the 3-layer head "
                     "(2048 hidden, 256 bottleneck, 65536 outputs).")
  register_model(factory, name=f"dino_vit_{size}_patch{patch}")


# DINO paper Table 2 / Sec. 4: ViT-S/16, ViT-S/8, ViT-B/16, ViT-B/8.
for _size, _patch in (("small", 16), ("small", 8), ("base", 16), ("base", 8)):
  _register_dino(_size, _patch)


@register_model
def dino_vit_quickstart(**overrides):
  """DINO for 16x16 digits: configs/mae_digits.py's encoder (patch 4, width 64,
  4 blocks, 4 heads, MLP 128) and a small head (256 hidden, 64 bottleneck, 1024 out)."""
  overrides.pop("num_classes", None)
  kw = dict(patch_size=4, hidden_size=64, depth=4, num_heads=4, mlp_dim=128,
            out_dim=1024, head_hidden_dim=256, head_bottleneck_dim=64)
  kw.update(overrides)
  return DinoViT(num_classes=0, **kw)
