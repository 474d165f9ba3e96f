"""SimMIM (Xie et al. 2022, "SimMIM: A Simple Framework for Masked Image
Modeling"): the encoder and its one-layer prediction head.

image -> encoder (a ViT or a Swin, every token; masked patch embeddings
replaced by a learned mask token, position embeddings still added) -> the
last feature map at the encoder's output stride s (16 for ViT-B/16, 32 for
Swin) -> one linear layer (a 1x1 conv) to s*s*3 values per position -> pixel
shuffle to an [B, H, W, 3] image. The L1 loss on the masked pixels and the
mask sampling are the task's (vitjax/tasks/simmim.py).

The encoder's parameters sit at the top level under the names of the plain
registry model (`nn.share_scope`), plus `mask_token`; the head is
`simmim_pred`. A SimMIM checkpoint therefore fine-tunes the encoder's
classifier with `config.init_from` (mask token and head left out), and the
probes (`vitjax.tools.probe`) run the encoder without a mask.

`__call__(images, train=False, mask=None)`: without a mask it is the encoder
((pooled, out) with out['feature_map'], 'pre_logits', ...); with `mask`
([B, h, w] bool over the encoder's patch grid, True = masked) it returns
(reconstruction [B, H, W, 3], out) with out['reconstruction'] too.
"""

import flax.linen as nn
import jax.numpy as jnp

from vitjax.errors import UserError
from vitjax.models.features import feature_levels, layer_groups
from vitjax.models.registry import create_model, register_model


def pixel_shuffle(x, scale: int, channels: int = 3):
  """[B, h, w, s*s*C] -> [B, h*s, w*s, C]; channel index (i*s + j)*C + c
  goes to pixel (i, j) of the s x s cell, colour c."""
  b, h, w, _ = x.shape
  x = x.reshape(b, h, w, scale, scale, channels).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h * scale, w * scale, channels)


def output_stride(encoder) -> int:
  """Input pixels per position of the encoder's last feature map: the stride
  of its deepest declared feature level (models/features.py)."""
  return feature_levels(encoder)[-1].stride


class SimMIM(nn.Module):
  """A registry encoder (num_classes=0) with SimMIM's linear pixel head.

  mask_patch_size: side in pixels of the square blocks masked together
    (paper: 32 on 192 px images); a multiple of the output stride.
  mask_ratio: the fraction of blocks masked, in (0, 1) (paper: 0.6).
  """
  encoder: nn.Module
  mask_patch_size: int = 32
  mask_ratio: float = 0.6
  num_classes: int = 0  # unused: accepted because the trainer passes the dataset's

  def __post_init__(self):
    if not 0.0 < self.mask_ratio < 1.0:
      raise UserError(
          f"mask_ratio={self.mask_ratio} must be in (0, 1), the fraction of mask blocks "
          "hidden: SimMIM uses 0.6 (try 0.4-0.8), e.g. --config.model.mask_ratio=0.6.")
    s = output_stride(self.encoder)
    if self.mask_patch_size < s or self.mask_patch_size % s:
      lo = max(s, self.mask_patch_size // s * s)
      raise UserError(
          f"mask_patch_size={self.mask_patch_size} must be a multiple of the encoder's "
          f"output stride {s} (patch size x downsampling), so that a masked block is "
          f"whole patches and whole predicted cells: use {lo} or {lo + s}.")
    super().__post_init__()

  @property
  def patch_size(self) -> int:
    return self.encoder.patch_size

  @property
  def stride(self) -> int:
    return output_stride(self.encoder)

  def feature_levels(self):
    """The encoder's (models/features.py)."""
    return feature_levels(self.encoder)

  def layer_groups(self):
    """The encoder's (its parameters keep their names); the head is the top layer."""
    return layer_groups(self.encoder)

  @property
  def num_prefix_tokens(self) -> int:
    return getattr(self.encoder, "num_prefix_tokens", 0)

  def setup(self):
    nn.share_scope(self, self.encoder)  # encoder params keep their plain names
    self.pred = nn.Dense(self.stride ** 2 * 3, dtype=getattr(self.encoder, "dtype", None),
                         name="simmim_pred")

  def __call__(self, images, *, train: bool = False, mask=None):
    if mask is None and self.is_initializing():
      # An all-False mask: same outputs, and the mask token gets created.
      b, h, w, _ = images.shape
      mask = jnp.zeros((b, h // self.patch_size, w // self.patch_size), bool)
    if mask is None:
      return self.encoder(images, train=train)
    _, out = self.encoder(images, train=train, mask=mask)
    rec = pixel_shuffle(self.pred(out["feature_map"]), self.stride, images.shape[-1])
    rec = rec.astype(jnp.float32)
    out["reconstruction"] = rec
    return rec, out


def simmim_factory(encoder_name: str, **defaults):
  """A registry factory: SimMIM(encoder=create_model(encoder_name, ...)).

  Overrides named like SimMIM's own fields go to it, every other one to the
  encoder (e.g. window_size, drop_path_rate); the encoder has no head.
  """
  own = ("mask_patch_size", "mask_ratio")

  def factory(**overrides):
    kw = dict(defaults, **overrides)
    kw.pop("num_classes", None)
    mine = {k: kw.pop(k) for k in own if k in kw}
    return SimMIM(create_model(encoder_name, num_classes=0, **kw), **mine)
  factory.__doc__ = f"SimMIM pretraining model: a {encoder_name} encoder + linear pixel head."
  return factory


# SimMIM paper Sec. 4.1 / Table 1: Swin-B at 192x192 with window 6 (the
# 224-px window 7 model's shapes, v1 Table 1) and ViT-B/16 at 224x224
# (ViT Table 1); mask patch 32, mask ratio 0.6 for both.
register_model(simmim_factory("swin_base_patch4_window7_224", window_size=6,
                              mask_patch_size=32, mask_ratio=0.6, drop_path_rate=0.0),
               name="simmim_swin_base_patch4_window6_192")
register_model(simmim_factory("vit_base_patch16_224", mask_patch_size=32, mask_ratio=0.6,
                              drop_path_rate=0.1),
               name="simmim_vit_base_patch16_224")
register_model(simmim_factory("vit_quickstart", hidden_size=64, mlp_dim=128,
                              mask_patch_size=4, mask_ratio=0.6),
               name="simmim_vit_quickstart")
