"""Dense input pipeline: images with per-pixel labels (semantic segmentation).

The data-source contract of `vitjax.data.source` (whose iterators this
runs): train batches are a pure function of (config.seed, step), resumable
at any step, process i of P takes rows [i*L, (i+1)*L) of every global batch;
eval is one pass with mask=False padding rows.

Sources (config.dataset.name):
  'shapes'       the embedded procedural set (vitjax.data.shapes): train split
                 'train', eval split config.dataset.eval_split ('validation' or
                 'test'); classes background, circle, square, triangle.
  'tfds:<name>'  a prepared TFDS dataset with an image feature and a
                 segmentation-mask feature whose pixel values are class ids.
  'folder:<root>'  images/<split>/*.jpg + annotations/<split>/*.png (the
                 ADE20K layout; vitjax.data.seg_folder: reduce_zero_label,
                 bad_labels).

Settings in config.task_kwargs (all optional):
  num_classes        TFDS and folder only (required there): number of classes;
                     mask values >= num_classes count as ignored.
  image_key / mask_key  TFDS feature names ('image', 'segmentation_mask').
  ignore_index       label of pixels without a class (255).
  num_train_images / num_eval_images  shapes only (2000 / 500).
  shapes_image_size  side of the generated shapes (config.input.image_size).
  shapes_max_objects / shapes_size_range  see vitjax.data.shapes.
  shapes_labels      'semantic' (class ids) or 'panoptic': class + 16 * instance
                     id (1..K, 0 for background) per pixel (mask classification).
  scale_range        random resize factor range for training ((0.5, 2.0)).
  color_jitter       brightness / contrast / saturation strength (0.2; 0 off).

Train augmentation (applied to image and label map with the same random
draws): colour jitter (image only), random resize by a factor in
scale_range (bilinear for the image, nearest for the labels), padding to
at least image_size (labels padded with ignore_index), a random
image_size x image_size crop and a horizontal flip (config.input.flip).
Eval (`eval_iterator`, used by mask classification): resize to image_size x
image_size (labels nearest). The segmentation task evaluates on the original
label maps instead (vitjax.data.dense_eval).

Batches: image float32 [b, S, S, 3] (normalised with config.input.mean /
std), label int32 [b, S, S]; eval batches also mask bool [b].
"""

from collections.abc import Iterator

import numpy as np
import tensorflow as tf

from vitjax.data import input_pipeline
from vitjax.data import shapes
from vitjax.data import source as source_lib
from vitjax.data.source import DatasetInfo
from vitjax.errors import UserError

SHAPES_CLASSES = ("background",) + shapes.CLASS_NAMES
PANOPTIC_STRIDE = 16
_MASK_CHECK = "vitjax-dense: image and mask sizes differ"
_EMPTY_CHECK = "vitjax-dense: empty image"


def option(config, key, default):
  """config.task_kwargs[key], or `default` when it is not set."""
  kw = config.get("task_kwargs") or {}
  return kw.get(key, default) if hasattr(kw, "get") else default


def _shapes_arrays(split, n, seed, size, max_objects, size_range, labels="semantic"):
  records = shapes.generate(split, n, seed, size, max_objects, size_range)
  images, masks = shapes.as_arrays(records)
  if labels == "panoptic":  # class + PANOPTIC_STRIDE * instance id (1..K; 0: background)
    for m, r in zip(masks, records):
      for k, inst in enumerate(r["instance_masks"]):
        m[inst] += PANOPTIC_STRIDE * (k + 1)
  return images, masks


_CACHE = {}


def _cached_shapes(*key):
  if key not in _CACHE:
    if len(_CACHE) >= 4:  # a run needs two (train, eval); tests may ask for a few more
      _CACHE.clear()
    _CACHE[key] = _shapes_arrays(*key)
  return _CACHE[key]


def check_arrays(images: np.ndarray, masks: np.ndarray, what: str) -> None:
  """Refuses in-memory data whose images and masks do not line up."""
  if images.ndim != 4 or images.shape[-1] != 3 or 0 in images.shape:
    raise UserError(f"{what}: images must be a non-empty [N, H, W, 3] array, got shape "
                    f"{images.shape}.")
  if masks.shape != images.shape[:3]:
    raise UserError(f"{what}: masks {masks.shape} must be [N, H, W] = {images.shape[:3]} "
                    "(one class id per image pixel).")


def _shapes_source(config) -> source_lib.Source:
  eval_split = config.dataset.eval_split
  if eval_split not in ("validation", "test"):
    raise UserError(f"config.dataset.eval_split={eval_split!r}: the shapes set has "
                    "'validation' and 'test' for evaluation.")
  size = int(option(config, "shapes_image_size", config.input.image_size))
  labels = option(config, "shapes_labels", "semantic")
  max_objects = int(option(config, "shapes_max_objects", 4))
  if labels not in ("semantic", "panoptic") or (labels == "panoptic" and max_objects > 15):
    raise UserError(f"config.task_kwargs.shapes_labels={labels!r} with shapes_max_objects="
                    f"{max_objects}: use 'semantic', or 'panoptic' with at most 15 objects.")
  extra = (config.seed, size, max_objects,
           tuple(option(config, "shapes_size_range", (0.1, 0.25))), labels)
  n_train = option(config, "num_train_images", 2000)
  n_eval = option(config, "num_eval_images", 500)
  # The data set is fixed by seed 0 offsets of config.seed: train and eval
  # come from disjoint streams (see shapes.py), so eval images are held out.
  train = _cached_shapes("train", n_train, *extra)
  eval_ = _cached_shapes(eval_split, n_eval, *extra)
  check_arrays(*train, "shapes train")
  info = DatasetInfo(num_classes=len(SHAPES_CLASSES), num_train_examples=n_train,
                     num_eval_examples=n_eval, class_names=SHAPES_CLASSES)
  return source_lib.ArraySource(info=info, train_data=train, eval_data=eval_)


class _TfdsSegSource(source_lib.TfdsSource):
  """A prepared TFDS dataset with (image, segmentation mask) features."""

  def __init__(self, config, name):  # pylint: disable=super-init-not-called
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    data_dir = config.dataset.get("data_dir")
    try:
      builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.DatasetNotFoundError:
      raise UserError(f"config.dataset.name='tfds:{name}': {name!r} is not a TFDS dataset "
                      "(see https://www.tensorflow.org/datasets/catalog).") from None
    self.builder, self.name, self.data_dir = builder, name, data_dir
    self._image_key = option(config, "image_key", "image")
    self._label_key = option(config, "mask_key", "segmentation_mask")
    features = builder.info.features
    missing = [k for k in (self._image_key, self._label_key) if k not in features]
    if missing:
      raise UserError(
          f"TFDS dataset {name!r} has no feature(s) {missing}; its features are "
          f"{list(features.keys())}. Set config.task_kwargs.image_key / mask_key.")
    num_classes = option(config, "num_classes", None)
    if not isinstance(num_classes, int) or num_classes < 2:
      raise UserError(f"TFDS segmentation ({name!r}) needs config.task_kwargs.num_classes "
                      f"(an integer >= 2: the number of class ids in the masks), got "
                      f"{num_classes!r}.")
    self.decoders = tfds.decode.PartialDecoding({self._image_key: True,
                                                 self._label_key: True})
    self.train_split = config.dataset.train_split
    self.eval_split = config.dataset.eval_split
    self.shuffle_buffer = int(config.dataset.get("shuffle_buffer", 10_000))
    source_lib.Source.__init__(self, info=DatasetInfo(
        num_classes=num_classes,
        num_train_examples=self.split_size(self.train_split),
        num_eval_examples=self.split_size(self.eval_split),
        class_names=tuple(str(i) for i in range(num_classes))))

  def select(self, example):
    """(image, mask) of one TFDS example."""
    return example[self._image_key], example[self._label_key]


def make_source(config) -> source_lib.Source:
  """The segmentation source config.dataset names ('shapes' or 'tfds:<name>')."""
  name = config.dataset.name
  if name == "shapes":
    return _shapes_source(config)
  if isinstance(name, str) and name.startswith("tfds:"):
    return _TfdsSegSource(config, name[len("tfds:"):])
  if isinstance(name, str) and name.startswith("folder:"):
    from vitjax.data import seg_folder  # pylint: disable=g-import-not-at-top
    return seg_folder.make_source(config, name[len("folder:"):], option)
  raise UserError(f"config.dataset.name={name!r}: segmentation reads 'shapes' (embedded) "
                  "or 'tfds:<name>' (a TFDS dataset with segmentation masks) or "
                  "'folder:<root>' (images/<split>/*.jpg + annotations/<split>/*.png).")


def get_dataset_info(config) -> DatasetInfo:
  return make_source(config).info


# ----------------------------------------------------------------------------
# Per-example transforms (TF, stateless).


def settings(config) -> dict:
  """The validated per-example options (sizes, normalisation, augmentation)."""
  prep = input_pipeline.preprocessing(config)
  lo, hi = (float(x) for x in option(config, "scale_range", (0.5, 2.0)))
  if not 0 < lo <= hi:
    raise UserError(f"config.task_kwargs.scale_range=({lo}, {hi}) needs 0 < min <= max.")
  jitter = float(option(config, "color_jitter", 0.2))
  if not 0 <= jitter < 1:
    raise UserError(f"config.task_kwargs.color_jitter={jitter} must be in [0, 1).")
  ignore = int(option(config, "ignore_index", 255))
  num_classes = None if config.dataset.name == "shapes" else option(config, "num_classes", None)
  return dict(size=prep.image_size, mean=prep.mean, std=prep.std, flip=prep.flip,
              scale=(lo, hi), jitter=jitter, ignore=ignore, num_classes=num_classes)


def _decode(image, mask, opts):
  """uint8 image [h, w, 3] float in [0, 1] and int32 labels [h, w], checked."""
  if image.shape.rank == 3 and image.shape[-1] == 1:
    image = tf.image.grayscale_to_rgb(image)
  if mask.shape.rank == 3:
    mask = mask[..., 0]
  hw = tf.shape(image)[:2]
  tf.debugging.assert_positive(tf.reduce_prod(hw), message=_EMPTY_CHECK)
  tf.debugging.assert_equal(hw, tf.shape(mask)[:2], message=_MASK_CHECK)
  mask = tf.cast(mask, tf.int32)
  if opts["num_classes"]:
    mask = tf.where(mask >= opts["num_classes"], opts["ignore"], mask)
  return tf.image.convert_image_dtype(image, tf.float32), mask


def normalise(image, opts):
  """(image - mean) / std with config.input's mean and std."""
  return (image - tf.constant(opts["mean"])) / tf.constant(opts["std"])


def color_jitter(image, seeds, strength: float):
  """Random brightness / contrast / saturation of a [0, 1] image (3 stateless seeds)."""
  j = strength
  if j:
    image = tf.image.stateless_random_brightness(image, j, seeds[0])
    image = tf.image.stateless_random_contrast(image, 1 - j, 1 + j, seeds[1])
    image = tf.image.stateless_random_saturation(image, 1 - j, 1 + j, seeds[2])
    image = tf.clip_by_value(image, 0.0, 1.0)
  return image


def train_example(image, mask, seed, opts):
  """Augments one (image, label map) pair with the stateless seed `seed`."""
  image, mask = _decode(image, mask, opts)
  seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 8))
  image = normalise(color_jitter(image, seeds[:3], opts["jitter"]), opts)
  size = opts["size"]
  hw = tf.cast(tf.shape(image)[:2], tf.float32)
  scale = tf.random.stateless_uniform([], seeds[3], *opts["scale"])
  # The shorter side is scaled to scale * size (a no-op scale-1 for square inputs of size S).
  new = tf.maximum(tf.cast(tf.round(hw * scale * size / tf.reduce_min(hw)), tf.int32), 1)
  image = tf.image.resize(image, new, "bilinear")
  mask = tf.image.resize(mask[..., None], new, "nearest")[..., 0]
  pad = tf.maximum(size - new, 0)
  image = tf.pad(image, [[0, pad[0]], [0, pad[1]], [0, 0]])
  mask = tf.pad(mask, [[0, pad[0]], [0, pad[1]]], constant_values=opts["ignore"])
  room = tf.shape(mask) - size + 1
  oy = tf.random.stateless_uniform([], seeds[4], 0, room[0], tf.int32)
  ox = tf.random.stateless_uniform([], seeds[5], 0, room[1], tf.int32)
  image = image[oy:oy + size, ox:ox + size]
  mask = mask[oy:oy + size, ox:ox + size]
  if opts["flip"]:
    flip = tf.random.stateless_uniform([], seeds[6]) < 0.5
    image = tf.where(flip, image[:, ::-1], image)
    mask = tf.where(flip, mask[:, ::-1], mask)
  return dict(image=tf.ensure_shape(image, [size, size, 3]),
              label=tf.ensure_shape(mask, [size, size]))


def eval_example(image, mask, opts):
  image, mask = _decode(image, mask, opts)
  size = opts["size"]
  image = tf.image.resize(normalise(image, opts), [size, size], "bilinear")
  mask = tf.image.resize(mask[..., None], [size, size], "nearest")[..., 0]
  return dict(image=image, label=mask, mask=tf.constant(True))


def _explain(what):
  """Turns the in-graph data checks into UserErrors naming `what`."""

  def explain(error):
    if not isinstance(error, tf.errors.InvalidArgumentError):
      return
    for marker, msg in ((_MASK_CHECK, "a segmentation mask whose height/width differ from "
                         "its image's"), (_EMPTY_CHECK, "an empty (0-pixel) image")):
      if marker in str(error):
        raise UserError(f"{what}: the data holds {msg}; fix or drop that example.") from None
  return explain


# ----------------------------------------------------------------------------
# Iterators (the trainer's API).


def train_iterator(config, *, start_step: int = 0, process_index: int = 0,
                   process_count: int = 1) -> Iterator[dict]:
  """Infinite train batches from `start_step` on (deterministic in seed, step)."""
  source_lib.check_process(process_index, process_count)
  source_lib.local_batch_size(config.batch_size, process_count, "config.batch_size")
  opts = settings(config)
  source = make_source(config)
  spe = input_pipeline.steps_per_epoch(config, source.info)
  return source_lib.train_batches(
      source, lambda raw, seed: train_example(*source.load(*raw), seed, opts),
      seed=config.seed, batch_size=config.batch_size, steps_per_epoch=spe,
      start_step=start_step, process_index=process_index, process_count=process_count,
      explain=_explain(f"{source.info.num_train_examples}-example train split"))


def eval_iterator(config, *, process_index: int = 0, process_count: int = 1) -> Iterator[dict]:
  """One pass over the eval split; rows beyond the data have mask=False."""
  source_lib.check_process(process_index, process_count)
  source_lib.local_batch_size(config.eval_batch_size, process_count, "config.eval_batch_size")
  opts = settings(config)
  source = make_source(config)
  size = opts["size"]
  padding = dict(image=tf.zeros([size, size, 3], tf.float32),
                 label=tf.fill([size, size], opts["ignore"]), mask=tf.constant(False))
  return source_lib.eval_batches(
      source, lambda raw: eval_example(*source.load(*raw), opts), padding,
      batch_size=config.eval_batch_size, process_index=process_index,
      process_count=process_count, explain=_explain("eval split"))


_settings = settings  # The name tests and older callers use.
