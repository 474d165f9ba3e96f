"""Segmentation evaluation on the original label maps (the mmseg / HF protocol): the data.

Each eval example keeps its label map at its original size; the image goes
to the model resized by one of these rules (config.task_kwargs.eval_resize):
  'square'      image_size x image_size (HF SegformerImageProcessor's default
                `size={'height': S, 'width': S}`; the old vitjax eval);
  'short_side'  shorter side eval_short_side (default image_size), longer side
                at most eval_long_side (None: no limit), aspect ratio kept, with
                HF's rounding (`size={'shortest_edge', 'longest_edge'}`,
                transformers' get_size_with_aspect_ratio);
  'mmseg'       mmseg's `Resize(scale=(eval_long_side, eval_short_side),
                keep_ratio=True)`: factor min(long / longer side, short /
                shorter side), sides int(x * factor + 0.5);
  'none'        the image as it is.
Resizing is bilinear, rounded to 8 bits as the references' uint8 resizes are;
eval_antialias=True (default) filters when shrinking and resizes width, then
height, as PIL does under HF's processor (mmseg's cv2 resize does neither:
False).

Static shapes for jit: every image is padded (bottom / right, zeros after
normalisation, as mmseg's data preprocessor pads) to one canvas: the largest
resized size of the split rounded up to eval_size_divisor (32), and at
least the crop for sliding-window inference; every label map is padded with
ignore_index to the largest original size of the split. The sizes come from
the source (shapes: fixed; folder: its index; TFDS: one pass over the eval
split's label maps, once per process).

Batches: image float32 [b, Hc, Wc, 3], image_size int32 [b, 2] (the resized
image inside the canvas), label int32 [b, Lh, Lw] (original size, padded),
label_size int32 [b, 2], mask bool [b]. vitjax.tasks.seg_inference turns the
model's logits into logits on the label canvas (whole image or sliding window).
"""

import math
from collections.abc import Iterator

import numpy as np
import tensorflow as tf

from vitjax.data import dense
from vitjax.data import source as source_lib
from vitjax.errors import UserError

RESIZE_RULES = ("square", "short_side", "mmseg", "none")
INFERENCE = ("whole", "slide")
# Settings of config.task_kwargs (the segmentation task declares them) and their defaults.
EVAL_DEFAULTS = dict(eval_resize="square", eval_short_side=None, eval_long_side=None,
                     eval_antialias=True, eval_inference="whole", eval_crop=None,
                     eval_stride=None, eval_size_divisor=32)
_SIZE_CHECK = "vitjax-dense-eval: image larger than the canvas"
_SIZES = {}


def _pair(value, what):
  v = (value, value) if isinstance(value, int) else tuple(value)
  if len(v) != 2 or not all(isinstance(x, int) and x > 0 for x in v):
    raise UserError(f"config.task_kwargs.{what}={value!r}: use a positive integer or a pair "
                    "(height, width) of them.")
  return v


def protocol(config) -> dict:
  """The validated eval settings (see the module docstring)."""
  get = lambda k: dense.option(config, k, EVAL_DEFAULTS[k])
  size = int(config.input.image_size)
  rule, inference = get("eval_resize"), get("eval_inference")
  if rule not in RESIZE_RULES:
    raise UserError(f"config.task_kwargs.eval_resize={rule!r}: use one of {RESIZE_RULES}.")
  if inference not in INFERENCE:
    raise UserError(f"config.task_kwargs.eval_inference={inference!r}: use one of "
                    f"{INFERENCE}.")
  short = get("eval_short_side") or size
  long = get("eval_long_side")
  if not isinstance(short, int) or short < 1 or (long is not None and (
      not isinstance(long, int) or long < short)):
    raise UserError(f"config.task_kwargs.eval_short_side={short!r} / eval_long_side="
                    f"{long!r}: positive integers with long >= short (long may be None).")
  if rule == "mmseg" and long is None:
    raise UserError("config.task_kwargs.eval_resize='mmseg' needs eval_long_side (mmseg's "
                    "scale=(long, short), e.g. 2048 and 512 for ADE20K).")
  crop = _pair(get("eval_crop") or size, "eval_crop")
  stride = _pair(get("eval_stride") or tuple(c * 2 // 3 for c in crop), "eval_stride")
  if any(s > c for s, c in zip(stride, crop)):
    raise UserError(f"config.task_kwargs.eval_stride={stride} is larger than eval_crop="
                    f"{crop}: the windows would leave pixels out.")
  divisor = get("eval_size_divisor")
  if not isinstance(divisor, int) or divisor < 1:
    raise UserError(f"config.task_kwargs.eval_size_divisor={divisor!r}: a positive integer "
                    "(32 for SegFormer).")
  return dict(rule=rule, size=size, short=short, long=long,
              antialias=bool(get("eval_antialias")), inference=inference, crop=crop,
              stride=stride, divisor=divisor)


def resized_size(height: int, width: int, p: dict) -> tuple[int, int]:
  """(height, width) the model sees for an image of height x width (Python ints)."""
  if p["rule"] == "square":
    return p["size"], p["size"]
  if p["rule"] == "none":
    return height, width
  if p["rule"] == "mmseg":
    f = min(p["long"] / max(height, width), p["short"] / min(height, width))
    return int(height * f + 0.5), int(width * f + 0.5)
  # transformers.image_transforms.get_size_with_aspect_ratio(..., shortest, longest)
  size, raw = p["short"], None
  lo, hi = float(min(height, width)), float(max(height, width))
  if p["long"] is not None and hi / lo * size > p["long"]:
    raw = p["long"] * lo / hi
    size = int(round(raw))
  if (height <= width and height == size) or (width <= height and width == size):
    return height, width
  base = raw if raw is not None else size
  if width < height:
    return int(base * height / width), size
  return size, int(base * width / height)


def _resized_size_tf(hw, p: dict):
  """resized_size in TF (float64, the same rounding) on an int32 [2] (height, width)."""
  if p["rule"] == "square":
    return tf.constant([p["size"]] * 2, tf.int32)
  if p["rule"] == "none":
    return hw
  h, w = tf.unstack(tf.cast(hw, tf.float64))
  lo, hi = tf.minimum(h, w), tf.maximum(h, w)
  if p["rule"] == "mmseg":
    f = tf.minimum(p["long"] / hi, p["short"] / lo)
    return tf.cast(tf.floor(tf.stack([h, w]) * f + 0.5), tf.int32)
  size = tf.constant(float(p["short"]), tf.float64)
  raw = size
  if p["long"] is not None:
    limited = hi / lo * size > p["long"]
    raw = tf.where(limited, p["long"] * lo / hi, size)
    size = tf.where(limited, tf.round(raw), size)  # Python's round: half to even, as tf
  keep = ((h <= w) & (h == size)) | ((w <= h) & (w == size))
  portrait = tf.stack([tf.floor(raw * h / w), size])
  landscape = tf.stack([size, tf.floor(raw * w / h)])
  out = tf.where(keep, tf.stack([h, w]), tf.where(w < h, portrait, landscape))
  return tf.cast(out, tf.int32)


def source_sizes(source) -> tuple:
  """The (height, width) of every eval example of `source` (see the module docstring)."""
  if getattr(source, "eval_sizes", None) is not None:  # the folder source's index
    return tuple(source.eval_sizes)
  if isinstance(source, source_lib.ArraySource) and not source.has_paths:
    h, w = source.eval_data[1].shape[1:3]
    return ((int(h), int(w)),)
  key = (type(source).__name__, getattr(source, "name", None),
         getattr(source, "data_dir", None), getattr(source, "eval_split", None))
  if key not in _SIZES:  # e.g. TFDS: read the label maps once
    ds, _ = source.eval_stream(0, 1)
    ds = ds.map(lambda *raw: tf.shape(source.load(*raw)[1])[:2])
    _SIZES[key] = tuple({tuple(int(v) for v in hw) for hw in ds.as_numpy_iterator()})
  return _SIZES[key]


def canvases(sizes, p: dict) -> tuple[tuple[int, int], tuple[int, int]]:
  """(image canvas, label canvas) for the original sizes `sizes`."""
  label = tuple(max(s[i] for s in sizes) for i in (0, 1))
  resized = [resized_size(h, w, p) for h, w in sizes]
  image = [math.ceil(max(r[i] for r in resized) / p["divisor"]) * p["divisor"] for i in (0, 1)]
  if p["inference"] == "slide":
    image = [max(x, c) for x, c in zip(image, p["crop"])]
  return tuple(image), label


def _resize_8bit(image, size, antialias: bool):
  """Bilinear resize of a [0, 1] image, rounded to 8 bits as the references' uint8
  resizes are: with antialias as PIL (under HF) does it, width first, then height,
  each pass rounded; without, in one pass (cv2 under mmseg)."""
  rounded = lambda x: tf.clip_by_value(tf.floor(x + 0.5), 0.0, 255.0)
  image = image * 255.0
  if antialias:
    image = rounded(tf.image.resize(image, [tf.shape(image)[0], size[1]], "bilinear",
                                    antialias=True))
    image = rounded(tf.image.resize(image, [size[0], size[1]], "bilinear", antialias=True))
  else:
    image = rounded(tf.image.resize(image, size, "bilinear"))
  return image / 255.0


def eval_example(image, mask, opts: dict, p: dict, canvas, label_canvas) -> dict:
  """One (image, label map) pair as the protocol's example (see the module docstring)."""
  image, mask = dense._decode(image, mask, opts)  # pylint: disable=protected-access
  hw = tf.shape(mask)[:2]
  new = _resized_size_tf(hw, p)
  tf.debugging.assert_less_equal(new, tf.constant(canvas, tf.int32), message=_SIZE_CHECK)
  tf.debugging.assert_less_equal(hw, tf.constant(label_canvas, tf.int32), message=_SIZE_CHECK)
  image = tf.cond(tf.reduce_all(tf.equal(new, hw)), lambda: image,
                  lambda: _resize_8bit(image, new, p["antialias"]))
  image = dense.normalise(image, opts)
  pad = tf.constant(canvas, tf.int32) - new
  image = tf.pad(image, [[0, pad[0]], [0, pad[1]], [0, 0]])
  lpad = tf.constant(label_canvas, tf.int32) - hw
  label = tf.pad(mask, [[0, lpad[0]], [0, lpad[1]]], constant_values=opts["ignore"])
  return dict(image=tf.ensure_shape(image, list(canvas) + [3]), image_size=new,
              label=tf.ensure_shape(label, list(label_canvas)), label_size=hw,
              mask=tf.constant(True))


def layout(config, source=None):
  """(settings, protocol, image canvas, label canvas) of config's eval split."""
  source = source or dense.make_source(config)
  p = protocol(config)
  canvas, label_canvas = canvases(source_sizes(source), p)
  return dense.settings(config), p, canvas, label_canvas


def eval_iterator(config, *, process_index: int = 0, process_count: int = 1) -> Iterator[dict]:
  """One pass over the eval split at the original label sizes; padding rows mask=False."""
  source_lib.check_process(process_index, process_count)
  source_lib.local_batch_size(config.eval_batch_size, process_count, "config.eval_batch_size")
  source = dense.make_source(config)
  opts, p, canvas, label_canvas = layout(config, source)
  padding = dict(image=tf.zeros(list(canvas) + [3], tf.float32),
                 image_size=tf.constant(canvas, tf.int32),
                 label=tf.fill(list(label_canvas), opts["ignore"]),
                 label_size=tf.constant(label_canvas, tf.int32), mask=tf.constant(False))
  inner = dense._explain("eval split")  # pylint: disable=protected-access

  def explain(error):
    inner(error)
    if _SIZE_CHECK in str(error):
      raise UserError("eval split: an image is larger than the sizes read when the split "
                      "was indexed; the data changed during the run?") from None

  return source_lib.eval_batches(
      source, lambda raw: eval_example(*source.load(*raw), opts, p, canvas, label_canvas),
      padding, batch_size=config.eval_batch_size, process_index=process_index,
      process_count=process_count, explain=explain)


def prepare(image: np.ndarray, config) -> dict:
  """One uint8 image [H, W, 3] as a batch of one (for tools): no label map."""
  p = protocol(config)
  h, w = image.shape[:2]
  canvas, _ = canvases([(h, w)], p)
  opts = dense.settings(config)
  opts = dict(opts, num_classes=None)
  ex = eval_example(tf.constant(image), tf.zeros([h, w], tf.int32), opts, p, canvas, (h, w))
  return {k: np.asarray(v)[None] for k, v in ex.items()}
