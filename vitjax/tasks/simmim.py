"""SimMIM pretraining (Xie et al. 2022): mask square blocks of the image's
patches, reconstruct the raw pixels, L1 on the masked pixels only.

Plugs into the one trainer; labels are read by nobody. The model is a
`vitjax.models.simmim.SimMIM` (an encoder + its linear pixel head). Masks:
the image is cut into `mask_patch_size` blocks, exactly
ceil(mask_ratio * blocks) of them are masked per image (uniform at random),
and each block is spread over the encoder's patches it covers. Training
draws the masks from the step's RNG; evaluation from a fixed key, so two
checkpoints' eval losses are measured on the same masks.

`config.task_kwargs` (optional):
  norm_pix_loss (False): regress each target cell's pixels normalised by
    that cell's mean and standard deviation (over its stride x stride x C
    values, unbiased variance + 1e-6, as MAE's per-patch target; SimMIM's
    code has a local-window variant, `NORM_TARGET`). The reconstruction is
    compared with the normalised pixels; the L1 stays over masked pixels.
"""

import math

import jax
import jax.numpy as jnp

from vitjax.errors import UserError
from vitjax.tasks.base import Task, apply_model, fold_rng, register_task

_EVAL_SEED = 0
_DEFAULTS = dict(norm_pix_loss=False)


def random_block_mask(rng, batch: int, image_size: int, mask_patch_size: int,
                      patch_size: int, mask_ratio: float):
  """[batch, image/patch, image/patch] bool, True = masked: the image's
  (image/mask_patch)^2 blocks, ceil(ratio * blocks) of them masked per image,
  each block covering (mask_patch/patch)^2 model patches."""
  g = image_size // mask_patch_size
  n = g * g
  count = int(math.ceil(n * mask_ratio))
  noise = jax.random.uniform(rng, (batch, n))
  ranks = jnp.argsort(jnp.argsort(noise, axis=1), axis=1)
  blocks = (ranks < count).reshape(batch, g, g)
  scale = mask_patch_size // patch_size
  return jnp.repeat(jnp.repeat(blocks, scale, axis=1), scale, axis=2)


def pixel_mask(mask, patch_size: int):
  """[B, h, w] patch mask -> [B, h*p, w*p, 1] float pixel mask."""
  m = jnp.repeat(jnp.repeat(mask, patch_size, axis=1), patch_size, axis=2)
  return m[..., None].astype(jnp.float32)


def cell_stats(images, cell: int):
  """[B, H, W, C] -> (cells [B, H/cell, cell, W/cell, cell, C], mean, std) per
  cell x cell block (unbiased variance over its cell*cell*C values, + 1e-6)."""
  b, h, w, c = images.shape
  x = images.astype(jnp.float32).reshape(b, h // cell, cell, w // cell, cell, c)
  mean = jnp.mean(x, axis=(2, 4, 5), keepdims=True)
  std = jnp.sqrt(jnp.var(x, axis=(2, 4, 5), keepdims=True, ddof=1) + 1e-6)
  return x, mean, std


def normalize_cells(images, cell: int):
  """[B, H, W, C] -> the same pixels normalised per cell x cell block (mean 0,
  unbiased variance 1 over the block's cell*cell*C values; + 1e-6)."""
  x, mean, std = cell_stats(images, cell)
  return ((x - mean) / std).reshape(images.shape)


def masked_l1(images, reconstruction, mask, patch_size: int):
  """SimMIM's loss: mean |x - x_rec| over the masked pixels and channels.

  Returns (loss, per-image loss [B])."""
  m = pixel_mask(mask, patch_size)
  err = jnp.abs(images.astype(jnp.float32) - reconstruction.astype(jnp.float32)) * m
  c = images.shape[-1]
  per_image = jnp.sum(err, axis=(1, 2, 3)) / jnp.maximum(jnp.sum(m, axis=(1, 2, 3)) * c, 1e-5)
  loss = jnp.sum(err) / jnp.maximum(jnp.sum(m) * c, 1e-5)
  return loss, per_image


def check_geometry(image_size: int, model) -> None:
  """UserError unless the mask blocks tile the image (the model checks the
  mask ratio and that a block is whole patches / output cells)."""
  mp = model.mask_patch_size
  if image_size % mp:
    divisors = [d for d in range(model.stride, image_size + 1, model.stride)
                if image_size % d == 0]
    near = sorted(divisors, key=lambda d: abs(d - mp))[:2]
    raise UserError(
        f"mask_patch_size={mp} does not divide the image size {image_size}: the mask "
        f"blocks must tile the image. Use one of {sorted(near)} (--config.model."
        f"mask_patch_size) or an image size that is a multiple of {mp}.")


@register_task("simmim")
class SimMimTask(Task):
  """Images -> reconstruct the masked blocks' pixels (L1 on masked pixels)."""

  host_augment = True
  kwargs = _DEFAULTS

  def __init__(self, config, info, model):
    super().__init__(config, info, model)  # info: no labels read
    if not hasattr(model, "mask_patch_size"):
      raise UserError(f"config.task='simmim' needs a SimMIM model (simmim_*), not "
                      f"{config.model_name!r}; see vitjax.models.list_models('simmim_*').")
    check_geometry(config.input.image_size, model)
    if not isinstance(self.kw["norm_pix_loss"], bool):
      raise UserError(f"config.task_kwargs.norm_pix_loss={self.kw['norm_pix_loss']!r} "
                      "must be True or False.")

  def masks(self, rng, images):
    m = self.model
    return random_block_mask(rng, images.shape[0], images.shape[1], m.mask_patch_size,
                             m.patch_size, m.mask_ratio)

  def targets(self, images):
    """What the head regresses: the pixels, or their per-cell normalisation."""
    if self.kw["norm_pix_loss"]:
      return normalize_cells(images, self.model.stride)
    return images

  def train_loss(self, params, model_state, batch, rng, *, consts=None, task_state=None,
                 step=None):
    del consts, task_state, step
    images = batch["image"]
    mask = self.masks(fold_rng(rng, "simmim_masks"), images)
    rec, _, new_state = apply_model(self.model, params, model_state, images, train=True,
                                    rng=rng, mask=mask)
    loss, _ = masked_l1(self.targets(images), rec, mask, self.model.patch_size)
    return loss, ({}, new_state, None)

  def eval_sums(self, params, model_state, batch):
    images = batch["image"]
    mask = self.masks(fold_rng(jax.random.PRNGKey(_EVAL_SEED), "simmim_eval_masks"), images)
    rec, _, _ = apply_model(self.model, params, model_state, images, train=False, mask=mask)
    _, per_image = masked_l1(self.targets(images), rec, mask, self.model.patch_size)
    valid = batch["mask"].astype(jnp.float32)
    return {"count": jnp.sum(valid), "loss": jnp.sum(per_image * valid)}

  def eval_summary(self, sums):
    return {"loss": sums["loss"] / max(sums["count"], 1.0)}
