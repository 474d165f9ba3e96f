"""Decoding and preprocessing shared by every data source (TF ops for tf.data).

Every source hands over an image in one of two forms:

* an encoded file (a scalar `tf.string`: JPEG, PNG, GIF or BMP), or
* a raw array `[H, W, C]` (uint8 in 0..255, or float in [0, 1]) with C = 1, 3
  or 4.

`train_example` and `eval_example` turn it into a float32 `[S, S, 3]` image,
normalized with `(x - mean) / std` where x is the pixel scaled to [0, 1].

Pixels are scaled to [0, 1] right after decoding rather than just before
normalizing: crop, bilinear resize and flip are linear in the pixel values, so
the result is the same and the code has a single float path.

All train-time randomness is stateless: it comes only from the `seed` tensor
passed in (see `input_pipeline` for how it is derived from config.seed, the
epoch and the position in the epoch).
"""

import dataclasses

import tensorflow as tf

from vitjax.data import augment as augment_lib

TRAIN_AUGMENTS = ('inception_crop', 'random_crop', 'none')
# Aspect-ratio range of the Inception-style random resized crop.
_ASPECT_RATIO_RANGE = (3 / 4, 4 / 3)


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """The validated `config.input` fields (built by `input_pipeline`)."""
  image_size: int
  train_augment: str
  crop_scale: tuple[float, float]
  crop_padding: int
  flip: bool
  eval_resize: int | None
  mean: tuple[float, float, float]
  std: tuple[float, float, float]
  # RandAugment / color jitter / random erasing (config.augment, resolved).
  augment: augment_lib.Augment = augment_lib.Augment()


def to_float_rgb(image: tf.Tensor) -> tf.Tensor:
  """Decodes (if encoded) and returns float32 [H, W, 3] in [0, 1]."""
  if image.dtype == tf.string:
    image = tf.io.decode_image(image, channels=3, expand_animations=False)
  if image.dtype.is_integer:
    image = tf.cast(image, tf.float32) / float(image.dtype.max)
  else:
    image = tf.cast(image, tf.float32)
  channels = image.shape[-1]
  if channels == 1:
    image = tf.image.grayscale_to_rgb(image)
  elif channels == 4:
    image = image[..., :3]
  elif channels != 3:
    raise ValueError(f'Images must have 1, 3 or 4 channels, got shape '
                     f'{image.shape}.')
  return image


def _sample_crop_window(shape, seed, crop_scale):
  """Inception crop window [y, x, h, w] for an image of `shape` [H, W, C]."""
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      shape,
      bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
      seed=seed,
      min_object_covered=0.0,
      aspect_ratio_range=_ASPECT_RATIO_RANGE,
      area_range=crop_scale,
      max_attempts=10,
      use_image_if_no_bounding_boxes=True)
  return tf.stack([begin[0], begin[1], size[0], size[1]])


def _inception_crop(image, seed, crop_scale):
  """Random resized crop (before the resize); decodes `image` if encoded.

  JPEGs are decoded only inside the crop window (`decode_and_crop_jpeg`), which
  is what makes ImageNet-sized training affordable on the host; other formats
  are decoded fully and then cropped. Both paths sample the same window.
  Returns (cropped image, crop box [y0, x0, y1, x1] relative to the image).
  """
  if image.dtype != tf.string:
    image = to_float_rgb(image)
    window = _sample_crop_window(tf.shape(image), seed, crop_scale)
    return (tf.image.crop_to_bounding_box(image, *tf.unstack(window)),
            _relative_box(window, tf.shape(image)))

  def jpeg():
    shape = tf.image.extract_jpeg_shape(image)
    window = _sample_crop_window(shape, seed, crop_scale)
    return (to_float_rgb(tf.image.decode_and_crop_jpeg(image, window, channels=3)),
            _relative_box(window, shape))

  def other():
    decoded = tf.io.decode_image(image, channels=3, expand_animations=False)
    window = _sample_crop_window(tf.shape(decoded), seed, crop_scale)
    return (to_float_rgb(tf.image.crop_to_bounding_box(decoded, *tf.unstack(window))),
            _relative_box(window, tf.shape(decoded)))

  return tf.cond(tf.io.is_jpeg(image), jpeg, other)


def _relative_box(window, shape):
  """[y, x, h, w] pixels of an [H, W, ...] image -> [y0, x0, y1, x1] / (H, W)."""
  y, x, h, w = tf.unstack(tf.cast(window, tf.float32))
  height, width = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
  return tf.stack([y / height, x / width, (y + h) / height, (x + w) / width])


def _pad_and_random_crop(image, seed, padding):
  """Zero-pads by `padding` on each side, then crops back to the input size.

  The offset is drawn as `tf.image.stateless_random_crop` draws it (same seed,
  same crop); it is computed here so that the crop box can be returned:
  (cropped image, box [y0, x0, y1, x1] relative to the unpadded image; it
  reaches outside [0, 1] by up to padding / size).
  """
  shape = tf.shape(image)
  padded = tf.pad(image, [[padding, padding], [padding, padding], [0, 0]])
  limit = tf.shape(padded) - shape + 1
  offset = tf.random.stateless_uniform(
      [3], seed=seed, maxval=shape.dtype.max, dtype=shape.dtype) % limit
  cropped = tf.slice(padded, offset, shape)
  window = tf.stack([offset[0] - padding, offset[1] - padding, shape[0], shape[1]])
  return cropped, _relative_box(window, shape)


def _random_flip(image, seed):
  """Left-right flip with probability 1/2: (image, flipped), drawn as
  `tf.image.stateless_random_flip_left_right` draws it."""
  flipped = tf.random.stateless_uniform([], seed=seed, minval=0, maxval=1.0) < 0.5
  return tf.cond(flipped, lambda: tf.reverse(image, [1]), lambda: image), flipped


def _resize(image, height, width):
  return tf.image.resize(image, [height, width], method='bilinear',
                         antialias=True)


def _normalize(image, p: Preprocessing):
  image = (image - tf.constant(p.mean, tf.float32)) / tf.constant(
      p.std, tf.float32)
  return tf.ensure_shape(image, [p.image_size, p.image_size, 3])


def train_image(image, seed, p: Preprocessing, with_geometry: bool = False):
  """Train preprocessing: decode -> crop -> resize -> flip -> RandAugment ->
  color jitter -> normalize -> random erasing (the last three as configured).

  Args:
    image: encoded or raw image (see module docstring).
    seed: int tensor of shape [2]; the only source of randomness.
    p: preprocessing options.
    with_geometry: also return where the crop came from and whether it was
      flipped, so that per-example dense targets (e.g. token-labeling score
      maps of the whole image) can follow the augmentation.

  Returns:
    the float32 image [S, S, 3]; with_geometry: (image, crop box [y0, x0, y1,
    x1] relative to the source image (before the flip), flipped bool).
  """
  crop_seed, flip_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, num=2))
  box = tf.constant([0.0, 0.0, 1.0, 1.0])
  if p.train_augment == 'inception_crop':
    image, box = _inception_crop(image, crop_seed, p.crop_scale)
  else:
    image = to_float_rgb(image)
    if p.train_augment == 'random_crop':
      image, box = _pad_and_random_crop(image, crop_seed, p.crop_padding)
  image = _resize(image, p.image_size, p.image_size)
  flipped = tf.constant(False)
  if p.flip:
    image, flipped = _random_flip(image, flip_seed)
  if p.augment.host_side:
    # Folded-in seeds: crop and flip stay what they were without augmentation.
    aug_seed = tf.random.experimental.stateless_fold_in(seed, 1)
    image = augment_lib.augment_image(image, aug_seed, p.augment)
  image = _normalize(image, p)
  if p.augment.random_erase:
    erase_seed = tf.random.experimental.stateless_fold_in(seed, 2)
    image = augment_lib.random_erase(image, erase_seed, p.augment.random_erase)
  if with_geometry:
    return image, box, flipped
  return image


def whole_image(image, p: Preprocessing) -> tf.Tensor:
  """The whole image resized to [S, S] (no crop) and normalized: the frame a
  train crop box (`train_image(..., with_geometry=True)`) is relative to."""
  return _normalize(_resize(to_float_rgb(image), p.image_size, p.image_size), p)


def eval_image(image, p: Preprocessing) -> tf.Tensor:
  """Eval preprocessing: decode -> resize (+ center crop) -> normalize."""
  image = to_float_rgb(image)
  if p.eval_resize is None:
    image = _resize(image, p.image_size, p.image_size)
  else:
    # Shorter side to eval_resize (aspect ratio kept), then center crop.
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = p.eval_resize / tf.reduce_min(shape)
    height, width = tf.unstack(
        tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), p.eval_resize))
    image = _resize(image, height, width)
    image = tf.image.crop_to_bounding_box(
        image, (height - p.image_size) // 2, (width - p.image_size) // 2,
        p.image_size, p.image_size)
  return _normalize(image, p)
