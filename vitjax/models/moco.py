"""MoCo v3's encoder (Chen, Xie and He 2021, "An Empirical Study of Training
Self-Supervised Vision Transformers"): a ViT backbone, a projector and, on the
query side, a predictor.

image -> ViT (vit.py's, no classifier) -> class token -> projector: 3-layer
MLP (4096 hidden, Dense without bias -> BatchNorm -> ReLU; last layer 256-d
-> BatchNorm without scale/shift) -> predictor: 2-layer MLP of the same kind
(4096 hidden, 256 out, last BatchNorm without scale/shift) (paper Sec. 3 and
its code: every layer of both MLPs has BN). The momentum encoder is the same
network without the predictor (`predict=False`), its weights an EMA of these
(vitjax/tasks/moco.py).

The backbone keeps a `VisionTransformer`'s parameter names at the top level;
the heads are under `projector/` and `predictor/` (BatchNorm statistics in
'batch_stats'): a MoCo checkpoint is probed and fine-tuned as a ViT.
`__call__(images, train=False, predict=True)` returns (q [B, 256], out);
`out['pre_logits']` is the backbone's class token. The paper's ViT uses a
fixed 2-D sin-cos position embedding (`posemb='sincos2d'`, set in
configs/moco_v3_vit_b16.py) and, as an option, a frozen random patch
projection (task_kwargs.random_patch_projection).
"""

import flax.linen as nn
import jax.numpy as jnp

from vitjax.errors import UserError
from vitjax.models.registry import register_model
from vitjax.models.vit import VIT_SIZES, VisionTransformer


class BnMlp(nn.Module):
  """(Dense no bias -> BN -> ReLU) x (n-1) -> Dense no bias -> BN (no affine)."""
  hidden_dim: int
  out_dim: int
  num_layers: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    for i in range(self.num_layers):
      last = i == self.num_layers - 1
      x = nn.Dense(self.out_dim if last else self.hidden_dim, use_bias=False,
                   dtype=self.dtype, name=f"dense_{i}")(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                       use_scale=not last, use_bias=not last, dtype=self.dtype,
                       name=f"bn_{i}")(x)
      if not last:
        x = nn.relu(x)
    return x


class MocoViT(VisionTransformer):
  """A ViT (no classifier) with MoCo v3's projector and predictor."""
  proj_dim: int = 256
  head_hidden_dim: int = 4096
  proj_layers: int = 3
  pred_layers: int = 2

  def __post_init__(self):
    if min(self.proj_dim, self.head_hidden_dim, self.proj_layers, self.pred_layers) < 1:
      raise UserError(
          f"MoCo v3 heads: proj_dim={self.proj_dim}, head_hidden_dim={self.head_hidden_dim}, "
          f"proj_layers={self.proj_layers}, pred_layers={self.pred_layers} must all be >= 1 "
          "(paper: 256, 4096, 3, 2).")
    if self.num_classes or self.pool != "cls":
      raise UserError("A MoCo v3 model has no classifier (num_classes=0) and reads the class "
                      f"token (pool='cls'); got num_classes={self.num_classes}, "
                      f"pool={self.pool!r}.")
    super().__post_init__()

  @nn.compact
  def __call__(self, images, *, train: bool = False, predict: bool = True):
    feats, out = super().__call__(images, train=train)
    z = BnMlp(self.head_hidden_dim, self.proj_dim, self.proj_layers, dtype=self.dtype,
              name="projector")(feats, train)
    if not predict:
      return z, out
    q = BnMlp(self.head_hidden_dim, self.proj_dim, self.pred_layers, dtype=self.dtype,
              name="predictor")(z, train)
    return q, out


def _register_moco(size):
  def factory(**overrides):
    overrides.pop("num_classes", None)  # the trainer passes the dataset's; MoCo has none
    return MocoViT(**dict(VIT_SIZES[size], patch_size=16, num_classes=0, **overrides))
  factory.__doc__ = (f"MoCo v3 ViT-{size}/16: backbone, projector (3 layers) and predictor "
                     "(2 layers), 4096 hidden, 256 out.")
  register_model(factory, name=f"moco_v3_vit_{size}_patch16")


# MoCo v3 paper Table 1 / Sec. 5: ViT-S/16, ViT-B/16, ViT-L/16 (ViT-H/14 left out).
for _size in ("small", "base", "large"):
  _register_moco(_size)


@register_model
def moco_v3_vit_quickstart(**overrides):
  """MoCo v3 for 16x16 digits: configs/mae_digits.py's encoder (patch 4, width 64,
  4 blocks, 4 heads, MLP 128), heads of 256 hidden and 64 out."""
  overrides.pop("num_classes", None)
  kw = dict(patch_size=4, hidden_size=64, depth=4, num_heads=4, mlp_dim=128,
            proj_dim=64, head_hidden_dim=256)
  kw.update(overrides)
  return MocoViT(num_classes=0, **kw)
