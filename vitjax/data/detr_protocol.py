"""The DETR detection protocol: aspect-preserving resize, padding with a pixel mask.

What DETR (Carion et al. 2020, `datasets/coco.py`), Deformable DETR and HF's
`DetrImageProcessor` / `DeformableDetrImageProcessor` do, as per-example
TF transforms for vitjax.data.detection (config.task_kwargs.resize='detr'):

  eval   resize so that the shorter side is `min_size` and the longer at most
         `max_size` (HF's `get_size_with_aspect_ratio`, exactly), bilinear
         with PIL on the uint8 image (what both references do), scale to
         [0, 1], normalise with config.input.mean / std, pad with zeros at the
         bottom / right to the fixed `canvas` (H, W) and return `pixel_mask`
         (1 on the image, 0 on the padding).
  train  DETR's augmentation: horizontal flip (config.input.flip), then with
         probability 1/2 either a resize to a shorter side drawn from
         `train_sizes` (longer side at most `max_size`), or (`random_crop`)
         a resize to a shorter side drawn from `crop_sizes` (no cap), a random
         crop of h x w with each side drawn uniformly from
         [crop_range[0], min(side, crop_range[1])] (boxes clipped to it,
         emptied ones dropped) and then the `train_sizes` resize; colour
         jitter (config.task_kwargs.color_jitter; DETR has none, set 0);
         normalise, pad to `canvas`, `pixel_mask`.

Static shapes: every image is padded to the same `canvas` (default
max_size x max_size), so one compiled step serves every batch. HF pads a batch
to its largest image instead; the model sees the same image and mask either
way, but a convolution near an image's bottom / right border reads the
padding (zeros after normalisation, in both) and, near the canvas edge, the
convolution's own zero padding, so outputs agree exactly when the canvas
equals HF's padded size (HF `pad_size`, or the batch maximum) and closely
otherwise.

Boxes are normalised by the resized image (not the canvas), as in DETR: the
model predicts them relative to the image its pixel mask outlines, and
post-processing multiplies by each image's original (w, h).

Settings (config.task_kwargs): min_size (800), max_size (1333), canvas
((max_size, max_size)), train_sizes (DETR's 480, 512, ..., 800 times
min_size / 800), random_crop (True), crop_sizes ((400, 500, 600) times
min_size / 800), crop_range ((384, 600) times min_size / 800). A smaller
canvas is allowed (e.g. HF's batch maximum for known images); an image that
does not fit it stops the pipeline with a UserError.
"""

import numpy as np
import tensorflow as tf

from vitjax.data import dense
from vitjax.errors import UserError

_DETR_SCALES = tuple(range(480, 801, 32))
_CANVAS_CHECK = "vitjax-detr: resized image larger than the canvas"


def settings(config, base: dict) -> dict:
  """`base` (vitjax.data.detection's options) plus the validated DETR settings."""
  opt = lambda k, d: dense.option(config, k, d)  # noqa: E731
  min_size = int(opt("min_size", 800))
  max_size = int(opt("max_size", 1333))
  if not 0 < min_size <= max_size:
    raise UserError(f"config.task_kwargs min_size={min_size}, max_size={max_size}: need "
                    "0 < min_size <= max_size (DETR: 800 and 1333).")
  f = min_size / 800
  scaled = lambda v: tuple(max(1, int(round(x * f))) for x in v)  # noqa: E731
  train_sizes = tuple(int(x) for x in opt("train_sizes", scaled(_DETR_SCALES)))
  crop_sizes = tuple(int(x) for x in opt("crop_sizes", scaled((400, 500, 600))))
  crop_range = tuple(int(x) for x in opt("crop_range", scaled((384, 600))))
  canvas = tuple(int(x) for x in opt("canvas", (max_size, max_size)))
  if not train_sizes or min(train_sizes) < 1 or not crop_sizes or min(crop_sizes) < 1:
    raise UserError(f"config.task_kwargs.train_sizes={train_sizes} / crop_sizes={crop_sizes}: "
                    "need non-empty lists of positive shorter sides.")
  if len(crop_range) != 2 or not 0 < crop_range[0] <= crop_range[1]:
    raise UserError(f"config.task_kwargs.crop_range={crop_range}: need (min, max) with "
                    "0 < min <= max (DETR: (384, 600)).")
  if len(canvas) != 2 or min(canvas) < 1:
    raise UserError(f"config.task_kwargs.canvas={canvas} must be (H, W), positive; "
                    f"(max_size, max_size) = ({max_size}, {max_size}) fits every image.")
  return dict(base, min_size=min_size, max_size=max_size, train_sizes=train_sizes,
              crop_sizes=crop_sizes, crop_range=crop_range, canvas=canvas,
              random_crop=bool(opt("random_crop", True)))


# ----------------------------------------------------------------------------
# Sizes and resizing.


def resized_shape(hw, size, max_size=None):
  """HF's `get_size_with_aspect_ratio` in TF: (h, w) int32 of an image of
  `hw` whose shorter side becomes `size`, the longer at most `max_size`."""
  h, w = (tf.cast(v, tf.float64) for v in tf.unstack(tf.cast(hw, tf.int64)))
  size = tf.cast(size, tf.float64)
  lo, hi = tf.minimum(h, w), tf.maximum(h, w)
  capped = tf.constant(False)
  raw = size
  if max_size is not None:
    capped = hi / lo * size > max_size
    raw = tf.where(capped, max_size * lo / hi, size)
    size = tf.where(capped, tf.round(raw), size)  # Python's round: half to even
  keep = ((h <= w) & tf.equal(h, size)) | ((w <= h) & tf.equal(w, size))
  base = tf.where(capped, raw, size)
  oh = tf.where(w < h, tf.floor(base * h / w), size)
  ow = tf.where(w < h, size, tf.floor(base * w / h))
  out = tf.where(keep, tf.stack([h, w]), tf.stack([oh, ow]))
  return tf.cast(out, tf.int32)


def _pil_bilinear(image, h, w):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  if image.shape[:2] == (h, w):
    return image
  return np.asarray(Image.fromarray(image).resize((int(w), int(h)), Image.BILINEAR))


def resize_uint8(image, hw):
  """PIL bilinear (antialiased when shrinking) resize of a uint8 [h, w, 3] image."""
  out = tf.numpy_function(_pil_bilinear, [image, hw[0], hw[1]], tf.uint8, stateful=False)
  return tf.ensure_shape(out, [None, None, 3])


def _scale_boxes(boxes, old_hw, new_hw):
  r = tf.cast(new_hw, tf.float32) / tf.cast(old_hw, tf.float32)
  return boxes * tf.stack([r[1], r[0], r[1], r[0]])


def _resize(image, boxes, size, max_size=None):
  new = resized_shape(tf.shape(image)[:2], size, max_size)
  return resize_uint8(image, new), _scale_boxes(boxes, tf.shape(image)[:2], new)


def _pick(values, seed):
  values = tf.constant(values, tf.int32)
  return values[tf.random.stateless_uniform([], seed, 0, tf.size(values), tf.int32)]


# ----------------------------------------------------------------------------
# Per-example transforms.


def _decode(image, targets):
  """uint8 [h, w, 3] image, xyxy pixel boxes, int32 labels (padding rows dropped)."""
  if image.shape.rank == 3 and image.shape[-1] == 1:
    image = tf.image.grayscale_to_rgb(image)
  image = tf.image.convert_image_dtype(image, tf.uint8)
  targets = tf.reshape(tf.cast(targets, tf.float32), [-1, 5])
  targets = tf.boolean_mask(targets, targets[:, 4] >= 0)
  hw = tf.cast(tf.shape(image)[:2], tf.float32)
  boxes = tf.clip_by_value(targets[:, :4], 0.0, 1.0) * tf.stack([hw[1], hw[0], hw[1], hw[0]])
  return image, boxes, tf.cast(targets[:, 4], tf.int32)


def _pad(image, opts):
  """Normalised float image -> (canvas image, pixel_mask)."""
  ch, cw = opts["canvas"]
  hw = tf.shape(image)[:2]
  check = tf.debugging.assert_less_equal(hw, tf.constant([ch, cw]), message=_CANVAS_CHECK)
  with tf.control_dependencies([check]):
    hw = tf.identity(hw)
  pad = [[0, ch - hw[0]], [0, cw - hw[1]]]
  image = tf.pad(image, pad + [[0, 0]])
  mask = tf.pad(tf.ones(hw, tf.int32), pad)
  return tf.ensure_shape(image, [ch, cw, 3]), tf.ensure_shape(mask, [ch, cw])


def _targets(boxes, labels, hw, opts, min_box):
  """xyxy pixel boxes of an image of size hw -> padded normalised cx, cy, w, h."""
  from vitjax.data.detection import pack_targets  # pylint: disable=g-import-not-at-top
  return pack_targets(boxes, labels, hw, opts["max_boxes"], min_box)


def _random_size_crop(image, boxes, labels, seeds, lo, hi):
  """DETR's RandomSizeCrop(lo, hi): a random h x w window, boxes clipped to it."""
  hw = tf.shape(image)[:2]
  size = []
  for i, seed in enumerate(seeds[:2]):
    top = tf.minimum(hw[i], hi)
    size.append(tf.random.stateless_uniform([], seed, tf.minimum(lo, top), top + 1, tf.int32))
  ch, cw = size
  oy = tf.random.stateless_uniform([], seeds[2], 0, hw[0] - ch + 1, tf.int32)
  ox = tf.random.stateless_uniform([], seeds[3], 0, hw[1] - cw + 1, tf.int32)
  image = image[oy:oy + ch, ox:ox + cw]
  off = tf.cast(tf.stack([ox, oy, ox, oy]), tf.float32)
  lim = tf.cast(tf.stack([cw, ch, cw, ch]), tf.float32)
  boxes = tf.clip_by_value(boxes - off, 0.0, lim)
  keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
  return image, tf.boolean_mask(boxes, keep), tf.boolean_mask(labels, keep)


def train_example(image, targets, seed, opts):
  """DETR's train augmentation of one (image, targets) pair (stateless `seed`)."""
  image, boxes, labels = _decode(image, targets)
  seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 12))
  if opts["flip"]:
    flip = tf.random.stateless_uniform([], seeds[0]) < 0.5
    w = tf.cast(tf.shape(image)[1], tf.float32)
    image = tf.where(flip, image[:, ::-1], image)
    boxes = tf.where(flip, tf.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0],
                                     boxes[:, 3]], 1), boxes)

  def plain():
    return image, boxes, labels

  def cropped():
    im, bx = _resize(image, boxes, _pick(opts["crop_sizes"], seeds[2]))
    return _random_size_crop(im, bx, labels, seeds[3:7], *opts["crop_range"])

  if opts["random_crop"]:
    crop = tf.random.stateless_uniform([], seeds[1]) < 0.5
    image, boxes, labels = tf.cond(crop, cropped, plain)
  image, boxes = _resize(image, boxes, _pick(opts["train_sizes"], seeds[7]), opts["max_size"])
  hw = tf.shape(image)[:2]
  image = tf.image.convert_image_dtype(image, tf.float32)
  image = dense.normalise(dense.color_jitter(image, seeds[8:11], opts["jitter"]), opts)
  out = _targets(boxes, labels, hw, opts, opts["min_box"])
  out["image"], out["pixel_mask"] = _pad(image, opts)
  return out


def eval_example(image, targets, opts):
  """The reference eval transform of one (image, targets) pair."""
  image, boxes, labels = _decode(image, targets)
  orig = tf.shape(image)[:2]
  image, boxes = _resize(image, boxes, opts["min_size"], opts["max_size"])
  hw = tf.shape(image)[:2]
  image = dense.normalise(tf.image.convert_image_dtype(image, tf.float32), opts)
  out = _targets(boxes, labels, hw, opts, 1e-6)
  out["image"], out["pixel_mask"] = _pad(image, opts)
  out.update(mask=tf.constant(True), orig_size=tf.cast(orig, tf.float32))
  return out


def eval_padding(opts) -> dict:
  """The example filling eval rows beyond the data (a blank image, all valid)."""
  ch, cw = opts["canvas"]
  t = opts["max_boxes"]
  return dict(boxes=tf.zeros([t, 4]), labels=tf.zeros([t], tf.int32),
              box_valid=tf.zeros([t], bool), image=tf.zeros([ch, cw, 3], tf.float32),
              pixel_mask=tf.ones([ch, cw], tf.int32), mask=tf.constant(False),
              orig_size=tf.constant([float(ch), float(cw)]))
