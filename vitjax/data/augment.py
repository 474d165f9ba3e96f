"""Train-time image augmentation in tf.data: RandAugment, color jitter, random
erasing, and the AugReg presets that name combinations of them with Mixup.

Everything works on float32 RGB images in [0, 1] (the pipeline's format after
crop / resize / flip, before normalisation) and is stateless: every random
choice comes from the per-example `seed` the input pipeline derives from
(config.seed, epoch, position), so a run's augmentations are reproducible and
resume exactly.

RandAugment (Cubuk et al. 2020): `num_layers` times, pick one of the ops in
`RANDAUGMENT_OPS` uniformly and apply it at `magnitude` M (0..30; 10 is the
paper's "max level", AugReg also uses 15 and 20). Level l = M / 10; ops with a
direction (rotate, shear, translate, the enhance ops) take a random sign:
  rotate      +-30 l degrees           shear_x/y   +-0.3 l (tan of the angle)
  translate   +-0.45 l of the size     posterize   keep 8 - int(4 l) bits (>= 1)
  solarize    invert pixels >= 1 - l   solarize_add +110/255 l where < 128/255
  color, contrast, brightness, sharpness: blend factor 1 +- 0.9 l (>= 0)
  autocontrast, equalize, invert: no magnitude.
Geometric ops fill uncovered pixels with mid-grey (0.5). The op definitions
follow PIL's ImageOps / ImageEnhance on uint8 images (tests compare them).

Why here and not in the jitted step: these are per-example, data-dependent
ops (histograms, per-image transforms) that tf.data runs in parallel on host
threads while the accelerator trains; Mixup / CutMix mix *pairs* of examples
and are a few elementwise ops, so they run inside the jitted step
(vitjax/tasks/mixing.py). Timings: README / the report of this change.
"""

import dataclasses
import math

import tensorflow as tf

from vitjax.errors import UserError

# AugReg (Steiner et al. 2021, "How to train your ViT?", Sec. 3.3 / Fig. 4):
# name -> (RandAugment (layers, magnitude) or None, Mixup alpha). Dropout and
# stochastic depth ("reg") are the model's fields (dropout / drop_path_rate).
AUGREG_PRESETS = {
    "none": (None, 0.0),
    "light1": ((2, 0), 0.0),
    "light2": ((2, 10), 0.2),
    "medium1": ((2, 15), 0.2),
    "medium2": ((2, 15), 0.5),
    "strong1": ((2, 20), 0.5),
    "strong2": ((2, 20), 0.8),
}
AUGREG_PRESETS["light"] = AUGREG_PRESETS["light1"]
AUGREG_PRESETS["medium"] = AUGREG_PRESETS["medium1"]
AUGREG_PRESETS["strong"] = AUGREG_PRESETS["strong1"]

MIX_MODES = ("batch", "elem")


@dataclasses.dataclass(frozen=True)
class Augment:
  """The effective augmentation settings (config.augment with its preset applied)."""
  randaugment_layers: int = 0
  randaugment_magnitude: float = 10.0
  color_jitter: float = 0.0
  random_erase: float = 0.0
  mixup_alpha: float = 0.0
  cutmix_alpha: float = 0.0
  mix_prob: float = 1.0
  switch_prob: float = 0.5
  mix_mode: str = "batch"

  @property
  def mixing(self) -> bool:
    return (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and self.mix_prob > 0

  @property
  def host_side(self) -> bool:
    return bool(self.randaugment_layers or self.color_jitter or self.random_erase)


def resolve(aug) -> Augment:
  """config.augment (ConfigDict / dict / None) -> validated `Augment`.

  A preset sets randaugment_layers / randaugment_magnitude / mixup_alpha; it
  cannot be combined with those fields set by hand (which would win is not
  obvious), so that is a UserError.
  """
  if aug is None:
    return Augment()
  get = aug.get
  fields = {f.name: get(f.name, f.default) for f in dataclasses.fields(Augment)}
  preset = get("preset", "") or ""
  if preset:
    if preset not in AUGREG_PRESETS:
      raise UserError(f"config.augment.preset={preset!r}: use '' (off) or one of "
                      f"{sorted(AUGREG_PRESETS)} (AugReg, Steiner et al. 2021).")
    if fields["randaugment_layers"] or fields["mixup_alpha"]:
      raise UserError(
          f"config.augment.preset={preset!r} sets RandAugment and Mixup itself, but "
          f"randaugment_layers={fields['randaugment_layers']} / mixup_alpha="
          f"{fields['mixup_alpha']} are also set; use either the preset or those fields "
          "(set them to 0, or preset='').")
    ra, alpha = AUGREG_PRESETS[preset]
    fields["randaugment_layers"], fields["randaugment_magnitude"] = ra or (0, 10)
    fields["mixup_alpha"] = alpha
  a = Augment(**{k: type(Augment.__dataclass_fields__[k].default)(v)
                 for k, v in fields.items()})
  if a.randaugment_layers < 0 or not 0 <= a.randaugment_magnitude <= 30:
    raise UserError(f"config.augment: randaugment_layers={a.randaugment_layers} must be "
                    f">= 0 (0 = off, 2 is usual) and randaugment_magnitude="
                    f"{a.randaugment_magnitude} in [0, 30] (10, 15 or 20 are usual).")
  for name in ("color_jitter", "random_erase", "mix_prob", "switch_prob"):
    v = getattr(a, name)
    if not 0.0 <= v <= 1.0:
      raise UserError(f"config.augment.{name}={v}: use a value in [0, 1].")
  if a.mixup_alpha < 0 or a.cutmix_alpha < 0:
    raise UserError(f"config.augment: mixup_alpha={a.mixup_alpha} and cutmix_alpha="
                    f"{a.cutmix_alpha} are Beta(a, a) parameters; use 0 (off) or > 0 "
                    "(0.2-1.0 is usual).")
  if a.mix_mode not in MIX_MODES:
    raise UserError(f"config.augment.mix_mode={a.mix_mode!r}: use 'batch' (one lambda "
                    "per batch) or 'elem' (one per example).")
  return a


# ----------------------------------------------------------------------------
# Helpers.


def _blend(degenerate, image, factor):
  """PIL ImageEnhance: degenerate + factor * (image - degenerate), clipped."""
  return tf.clip_by_value(degenerate + factor * (image - degenerate), 0.0, 1.0)


def _grayscale(image):
  """PIL 'L' weights (ITU-R 601-2), [H, W, 1]."""
  return tf.reduce_sum(image * tf.constant([0.299, 0.587, 0.114]), -1, keepdims=True)


def _to_levels(image):
  """[0, 1] floats -> the uint8 levels 0..255 they stand for (as int32)."""
  return tf.cast(tf.round(tf.clip_by_value(image, 0.0, 1.0) * 255.0), tf.int32)


def _transform(image, matrix):
  """Output pixel (x, y) reads input at matrix @ (x, y, 1) (pixel-index
  coordinates, bilinear), grey where that falls outside."""
  shape = tf.shape(image)
  flat = tf.cast(tf.reshape(matrix, [9])[:8], tf.float32)
  out = tf.raw_ops.ImageProjectiveTransformV3(
      images=image[None], transforms=flat[None], output_shape=shape[:2],
      fill_value=0.5, interpolation="BILINEAR", fill_mode="CONSTANT")
  return out[0]


def _about_center(image, linear):
  """A 2x2 linear map applied about the image centre (output -> input)."""
  shape = tf.cast(tf.shape(image), tf.float32)
  cx, cy = (shape[1] - 1) / 2, (shape[0] - 1) / 2
  a, b, c, d = linear
  tx = cx - a * cx - b * cy
  ty = cy - c * cx - d * cy
  return _transform(image, tf.stack([a, b, tx, c, d, ty, 0.0, 0.0, 1.0]))


# ----------------------------------------------------------------------------
# The ops: (image [H, W, 3] in [0, 1], level >= 0, sign +-1) -> image.


def rotate(image, degrees):
  """Counter-clockwise by `degrees` about the centre."""
  t = degrees * math.pi / 180.0
  cos, sin = tf.cos(t), tf.sin(t)
  # output -> input is the inverse rotation; counter-clockwise on screen
  # (y grows downwards) is (x, y) -> (x cos + y sin, -x sin + y cos) forward.
  return _about_center(image, (cos, -sin, sin, cos))


def shear_x(image, s):
  return _about_center(image, (1.0, s, 0.0, 1.0))


def shear_y(image, s):
  return _about_center(image, (1.0, 0.0, s, 1.0))


def translate(image, dx, dy):
  """Moves the content by (dx, dy) pixels."""
  return _transform(image, tf.stack([1.0, 0.0, -dx, 0.0, 1.0, -dy, 0.0, 0.0, 1.0]))


def invert(image):
  return 1.0 - image


def solarize(image, threshold):
  """Inverts pixels >= threshold (PIL: levels >= threshold * 255)."""
  return tf.where(image >= threshold, 1.0 - image, image)


def solarize_add(image, addition, threshold=128 / 255):
  return tf.where(image < threshold, tf.clip_by_value(image + addition, 0.0, 1.0), image)


def posterize(image, bits):
  """Keeps the `bits` high bits of every uint8 level."""
  shift = 8 - tf.cast(bits, tf.int32)
  levels = tf.bitwise.left_shift(tf.bitwise.right_shift(_to_levels(image), shift), shift)
  return tf.cast(levels, tf.float32) / 255.0


def autocontrast(image):
  """Per channel: stretch [min, max] to [0, 1] (unchanged where max == min)."""
  lo = tf.reduce_min(image, axis=[0, 1], keepdims=True)
  hi = tf.reduce_max(image, axis=[0, 1], keepdims=True)
  scaled = (image - lo) / tf.maximum(hi - lo, 1e-12)
  return tf.where(hi > lo, scaled, image)


def _equalize_channel(levels):
  """PIL ImageOps.equalize on one uint8 channel (int32 [H, W])."""
  hist = tf.math.bincount(tf.reshape(levels, [-1]), minlength=256, maxlength=256)
  nonzero = tf.boolean_mask(hist, hist > 0)
  step = (tf.reduce_sum(hist) - nonzero[-1]) // 255

  def equalized():
    lut = (tf.cumsum(hist, exclusive=True) + step // 2) // step
    return tf.gather(tf.minimum(lut, 255), levels)

  return tf.cond(step > 0, equalized, lambda: levels)


def equalize(image):
  levels = _to_levels(image)
  out = tf.stack([_equalize_channel(levels[..., c]) for c in range(3)], -1)
  return tf.cast(out, tf.float32) / 255.0


def color(image, factor):
  return _blend(tf.image.grayscale_to_rgb(_grayscale(image)), image, factor)


def contrast(image, factor):
  return _blend(tf.reduce_mean(_grayscale(image)), image, factor)


def brightness(image, factor):
  return _blend(tf.zeros_like(image), image, factor)


def sharpness(image, factor):
  """Blend with PIL's SMOOTH filter (3x3, centre 5, total 13); the border
  pixels stay as they are."""
  kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
  kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
  smooth = tf.nn.depthwise_conv2d(image[None], kernel, [1, 1, 1, 1], "VALID")[0]
  smooth = tf.pad(smooth, [[1, 1], [1, 1], [0, 0]])
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  inner = tf.pad(tf.ones([h - 2, w - 2, 3]), [[1, 1], [1, 1], [0, 0]])
  degenerate = tf.where(inner > 0, smooth, image)
  return _blend(degenerate, image, factor)


def _enhance_factor(level, sign):
  return tf.maximum(1.0 + sign * 0.9 * level, 0.0)


# name -> fn(image, level, sign). Order fixes the op index a seed picks.
RANDAUGMENT_OPS = {
    "autocontrast": lambda x, l, s: autocontrast(x),
    "equalize": lambda x, l, s: equalize(x),
    "invert": lambda x, l, s: invert(x),
    "rotate": lambda x, l, s: rotate(x, s * 30.0 * l),
    "posterize": lambda x, l, s: posterize(
        x, tf.clip_by_value(8 - tf.cast(4 * l, tf.int32), 1, 8)),
    "solarize": lambda x, l, s: solarize(x, tf.maximum(1.0 - l, 0.0)),
    "solarize_add": lambda x, l, s: solarize_add(x, 110.0 / 255.0 * l),
    "color": lambda x, l, s: color(x, _enhance_factor(l, s)),
    "contrast": lambda x, l, s: contrast(x, _enhance_factor(l, s)),
    "brightness": lambda x, l, s: brightness(x, _enhance_factor(l, s)),
    "sharpness": lambda x, l, s: sharpness(x, _enhance_factor(l, s)),
    "shear_x": lambda x, l, s: shear_x(x, s * 0.3 * l),
    "shear_y": lambda x, l, s: shear_y(x, s * 0.3 * l),
    "translate_x": lambda x, l, s: translate(
        x, s * 0.45 * l * tf.cast(tf.shape(x)[1], tf.float32), 0.0),
    "translate_y": lambda x, l, s: translate(
        x, 0.0, s * 0.45 * l * tf.cast(tf.shape(x)[0], tf.float32)),
}


def apply_op(name, image, magnitude, sign=1.0):
  """One RandAugment op by name at `magnitude` (0..30)."""
  return RANDAUGMENT_OPS[name](image, tf.constant(magnitude / 10.0, tf.float32),
                               tf.constant(sign, tf.float32))


def randaugment(image, seed, num_layers: int, magnitude: float):
  """`num_layers` ops drawn uniformly (with replacement), each at `magnitude`."""
  ops = list(RANDAUGMENT_OPS.values())
  level = tf.constant(magnitude / 10.0, tf.float32)
  seeds = tf.random.experimental.stateless_split(seed, num=num_layers)
  for i in range(num_layers):
    pick = tf.random.stateless_uniform([2], seeds[i], maxval=1.0)
    index = tf.minimum(tf.cast(pick[0] * len(ops), tf.int32), len(ops) - 1)
    sign = tf.where(pick[1] < 0.5, -1.0, 1.0)
    branches = [lambda f=f: f(image, level, sign) for f in ops]
    image = tf.ensure_shape(tf.switch_case(index, branches), image.shape)
  return image


def color_jitter(image, seed, strength: float):
  """Brightness, contrast and saturation factors each uniform in
  [1 - strength, 1 + strength], applied in that order."""
  f = tf.random.stateless_uniform([3], seed, 1.0 - strength, 1.0 + strength)
  image = brightness(image, f[0])
  image = contrast(image, f[1])
  return color(image, f[2])


def erase_box(height, width, seed, scale=(0.02, 1 / 3), log_ratio=(math.log(0.3),
                                                                       math.log(1 / 0.3))):
  """Random erasing's box (y0, x0, h, w): area fraction uniform in `scale`,
  log aspect ratio uniform in `log_ratio`, clipped to the image."""
  u = tf.random.stateless_uniform([4], seed)
  area = tf.cast(height * width, tf.float32) * (scale[0] + u[0] * (scale[1] - scale[0]))
  ratio = tf.exp(log_ratio[0] + u[1] * (log_ratio[1] - log_ratio[0]))
  h = tf.clip_by_value(tf.cast(tf.round(tf.sqrt(area * ratio)), tf.int32), 1, height)
  w = tf.clip_by_value(tf.cast(tf.round(tf.sqrt(area / ratio)), tf.int32), 1, width)
  y0 = tf.cast(u[2] * tf.cast(height - h + 1, tf.float32), tf.int32)
  x0 = tf.cast(u[3] * tf.cast(width - w + 1, tf.float32), tf.int32)
  return tf.minimum(y0, height - h), tf.minimum(x0, width - w), h, w


def random_erase(image, seed, prob: float):
  """With probability `prob`, replaces a random box with N(0, 1) noise (on the
  normalised image, as in Zhong et al. 2020 / timm's 'pixel' mode)."""
  s_apply, s_box, s_noise = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  y0, x0, h, w = erase_box(height, width, s_box)
  rows = tf.range(height)[:, None, None]
  cols = tf.range(width)[None, :, None]
  inside = (rows >= y0) & (rows < y0 + h) & (cols >= x0) & (cols < x0 + w)
  inside &= tf.random.stateless_uniform([], s_apply) < prob
  noise = tf.random.stateless_normal(tf.shape(image), s_noise)
  return tf.where(inside, noise, image)


def augment_image(image, seed, a: Augment):
  """RandAugment then color jitter on a [0, 1] image (before normalisation)."""
  s_ra, s_cj = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  if a.randaugment_layers:
    image = randaugment(image, s_ra, a.randaugment_layers, a.randaugment_magnitude)
  if a.color_jitter:
    image = color_jitter(image, s_cj, a.color_jitter)
  return image
