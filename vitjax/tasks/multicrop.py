"""Self-supervised views, made inside the jitted train step (DINO, MoCo v3).

The input pipeline delivers one batch of images at `config.input.image_size`
(preprocessed and normalised as for classification); the views are made here
on the device, per image with its own random draws: random resized crop (to
any output size: DINO's global and local crops), horizontal flip, colour
jitter (brightness, contrast, saturation; no hue shift) with probability
`jitter_prob`, grayscale, Gaussian blur and solarisation, the BYOL / DINO
recipe (Grill et al. 2020, Caron et al. 2021 Sec. 3 / App. 8).

Why in the step and not the input pipeline: a multi-crop batch is a list of
batches of different shapes; made here, every data source (digits, TFDS,
ImageFolder) stays as it is, the views of one image come from the same
decoded image, and the cost is a few element-wise ops per crop next to a ViT.
The pipeline's own `train_augment` (e.g. the digits' 1-pixel shift) is
applied before.
"""

import dataclasses
import math
from typing import Sequence, Tuple

import jax
import jax.numpy as jnp

from vitjax.errors import UserError

_LUMA = jnp.array([0.299, 0.587, 0.114])


def check_crop_size(name: str, size: int, patch: int):
  """Refuses a view size (config.task_kwargs.<name>) that is not whole patches."""
  if size < patch or size % patch:
    lo = max(patch, size // patch * patch)
    raise UserError(
        f"config.task_kwargs.{name}={size} is not a multiple of the patch size {patch}: "
        "the position embedding covers whole patches; use "
        f"{lo} or {lo + patch if size > lo else 2 * patch}.")


def check_scale(name: str, scale):
  """Refuses a crop-area range (config.task_kwargs.<name>) outside 0 < lo <= hi <= 1."""
  lo, hi = (float(v) for v in scale)
  if not 0.0 < lo <= hi <= 1.0:
    raise UserError(f"config.task_kwargs.{name}={tuple(scale)}: a crop area range "
                    "(lo, hi) with 0 < lo <= hi <= 1, e.g. (0.4, 1.0) or (0.05, 0.4).")


@dataclasses.dataclass(frozen=True)
class ViewSpec:
  """How one kind of view is drawn (sizes in pixels, probabilities in [0, 1])."""
  size: int
  scale: Tuple[float, float] = (0.08, 1.0)   # crop area / image area
  flip: bool = True
  jitter_prob: float = 0.8
  jitter: Tuple[float, float, float] = (0.4, 0.4, 0.2)  # brightness, contrast, saturation
  gray_prob: float = 0.2
  blur_prob: float = 0.0
  solarize_prob: float = 0.0


def random_resized_crop(rng, images, size: int, scale, ratio=(3 / 4, 4 / 3)):
  """[B, H, W, C] -> [B, size, size, C]: one random box per image, resampled.

  Box area ~ U(scale) of the image, aspect ratio log-uniform in `ratio`,
  position uniform where it fits (a side longer than the image is cut to it).
  """
  b, h, w, c = images.shape
  k_area, k_ratio, k_y, k_x = jax.random.split(rng, 4)
  area = jax.random.uniform(k_area, (b,), minval=scale[0], maxval=scale[1])
  r = jnp.exp(jax.random.uniform(k_ratio, (b,), minval=math.log(ratio[0]),
                                 maxval=math.log(ratio[1])))
  cw = jnp.clip(jnp.sqrt(area * r), 1.0 / w, 1.0)   # fractions of the width / height
  ch = jnp.clip(jnp.sqrt(area / r), 1.0 / h, 1.0)
  y0 = jax.random.uniform(k_y, (b,)) * (1.0 - ch)
  x0 = jax.random.uniform(k_x, (b,)) * (1.0 - cw)

  def one(img, y0, x0, ch, cw):
    s = jnp.stack([size / (ch * h), size / (cw * w)])
    t = jnp.stack([-y0 * h, -x0 * w]) * s
    return jax.image.scale_and_translate(img, (size, size, c), (0, 1), s, t, "linear",
                                         antialias=True)
  return jax.vmap(one)(images, y0, x0, ch, cw)


def _gray(x):
  return jnp.sum(x * _LUMA.astype(x.dtype), axis=-1, keepdims=True)


def color_jitter(rng, x, strength):
  """Brightness, contrast, saturation factors ~ U(1 -+ strength) per image; x in [0, 1]."""
  b = x.shape[0]
  f = [jax.random.uniform(k, (b, 1, 1, 1), minval=1 - s, maxval=1 + s)
       for k, s in zip(jax.random.split(rng, 3), strength)]
  x = jnp.clip(x * f[0], 0, 1)
  m = jnp.mean(_gray(x), axis=(1, 2, 3), keepdims=True)
  x = jnp.clip((x - m) * f[1] + m, 0, 1)
  g = _gray(x)
  return jnp.clip((x - g) * f[2] + g, 0, 1)


def gaussian_blur(rng, x, sigma_range):
  """A separable Gaussian blur, sigma ~ U(sigma_range) pixels per image."""
  b = x.shape[0]
  radius = max(1, int(math.ceil(3 * sigma_range[1])))
  sigma = jax.random.uniform(rng, (b, 1), minval=sigma_range[0], maxval=sigma_range[1])
  offsets = jnp.arange(-radius, radius + 1, dtype=x.dtype)
  k = jnp.exp(-0.5 * (offsets[None] / sigma) ** 2)
  k = k / jnp.sum(k, axis=1, keepdims=True)                       # [B, 2r+1]
  pad = jnp.pad(x, ((0, 0), (radius, radius), (0, 0), (0, 0)), mode="reflect")
  x = sum(k[:, i, None, None, None] * pad[:, i:i + x.shape[1]] for i in range(2 * radius + 1))
  pad = jnp.pad(x, ((0, 0), (0, 0), (radius, radius), (0, 0)), mode="reflect")
  return sum(k[:, i, None, None, None] * pad[:, :, i:i + x.shape[2]]
             for i in range(2 * radius + 1))


def _maybe(rng, prob, new, old):
  if prob <= 0:
    return old
  on = jax.random.uniform(rng, (old.shape[0], 1, 1, 1)) < prob
  return jnp.where(on, new, old)


def make_view(rng, images, spec: ViewSpec, mean, std):
  """One view of every image of a normalised batch (normalised the same way)."""
  mean = jnp.asarray(mean, images.dtype)
  std = jnp.asarray(std, images.dtype)
  k = jax.random.split(rng, 9)
  x = random_resized_crop(k[0], images, spec.size, spec.scale)
  x = jnp.clip(x * std + mean, 0, 1)
  if spec.flip:
    x = _maybe(k[1], 0.5, x[:, :, ::-1], x)
  if spec.jitter_prob > 0:
    x = _maybe(k[2], spec.jitter_prob, color_jitter(k[3], x, spec.jitter), x)
  x = _maybe(k[4], spec.gray_prob, jnp.broadcast_to(_gray(x), x.shape), x)
  if spec.blur_prob > 0:
    # The paper's sigma range (0.1, 2.0) is for 224-pixel crops: scaled to this size.
    sig = (0.1 * spec.size / 224, 2.0 * spec.size / 224)
    x = _maybe(k[5], spec.blur_prob, gaussian_blur(k[6], x, sig), x)
  x = _maybe(k[7], spec.solarize_prob, jnp.where(x >= 0.5, 1.0 - x, x), x)
  return (x - mean) / std


def make_views(rng, images, specs: Sequence[ViewSpec], mean, std):
  """A list of views, one per spec, each from the same images with its own draws."""
  return [make_view(jax.random.fold_in(rng, i), images, s, mean, std)
          for i, s in enumerate(specs)]
