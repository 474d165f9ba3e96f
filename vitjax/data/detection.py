"""Detection input pipeline: images with sets of (class, box) targets.

The data-source contract of vitjax.data.source (whose iterators this runs;
the colour jitter is vitjax.data.dense's): train batches are a pure function
of (config.seed, step), resumable at any step, sharded by process as there;
eval is one pass with mask=False padding rows.

Sources (config.dataset.name):
  'shapes'      the embedded procedural set (vitjax.data.shapes), generated in
                memory from config.seed; classes circle, square, triangle.
  'coco_dir:<path>'  a COCO-format folder (annotations/instances_<split>.json
                + <split>/<file_name>, images of any sizes, read from disk per
                example; shapes.write_coco writes one): `read_coco_split` says
                which bad input is refused and which is skipped and counted.
  'tfds:<name>' a TFDS detection set such as coco/2017 (features image,
                objects/bbox [ymin, xmin, ymax, xmax] normalised, objects/label).

Every source yields (image uint8 [h, w, 3], targets float32 [K, 5]) with
targets rows (x0, y0, x1, y1 normalised, class 0..C-1); rows with class < 0
are padding.

Settings in config.task_kwargs (all optional): max_boxes (the target slots per
image; default config.model.num_queries or 100), scale_range ((0.5, 2.0)),
color_jitter (0.2), min_box_size (1 pixel after augmentation: smaller boxes
are dropped), num_train_images / num_eval_images / shapes_* (as in dense.py).

Two resize protocols (config.task_kwargs.resize):
  'square' (default)  train: colour jitter, random resize of the shorter side
      to scale * image_size, zero padding to at least image_size, a random
      image_size crop (boxes clipped to it, ones left under min_box_size
      dropped) and a horizontal flip; eval: resize to image_size x image_size.
  'detr'  DETR's / HF's protocol (vitjax.data.detr_protocol): aspect ratio
      kept (shorter side min_size, longer at most max_size; multi-scale
      training sizes and DETR's random crop), padded to a fixed canvas with a
      `pixel_mask` the DETR-family models respect as HF does.
Either way boxes are normalised by the (resized) image and evaluation maps
predictions back to each image's original size (orig_size).

Bad input: boxes outside the image are clipped to it; zero-area boxes are
dropped (a warning names how many, for in-memory sources); images without
objects are fine (the loss is then no-object only); an image with more
objects than max_boxes, or max_boxes above the model's num_queries, is a
UserError (at start-up for in-memory sources, at the first such batch for TFDS).

Batches: image float32 [b, S, S, 3] ('detr': [b, H, W, 3], the canvas, plus
pixel_mask int32 [b, H, W]), boxes float32 [b, T, 4] (cx, cy, w, h
normalised), labels int32 [b, T], box_valid bool [b, T]; eval batches also
mask bool [b] and orig_size float32 [b, 2] (h, w).
"""

import os
import warnings
from collections.abc import Iterator

import numpy as np
import tensorflow as tf

from vitjax.data import dense
from vitjax.data import detr_protocol
from vitjax.data import input_pipeline
from vitjax.data import shapes
from vitjax.data import source as source_lib
from vitjax.data.source import DatasetInfo
from vitjax.errors import UserError

_TOO_MANY = "vitjax-detection: more objects than max_boxes"


def num_queries(config) -> int | None:
  """config.model.num_queries, else the registry model's own (None: not a set predictor)."""
  model = config.get("model") or {}
  q = model.get("num_queries") if hasattr(model, "get") else None
  if not q and config.get("model_name"):
    from vitjax.models import create_model  # pylint: disable=g-import-not-at-top
    try:
      kw = model.to_dict() if hasattr(model, "to_dict") else dict(model)
      q = getattr(create_model(config.model_name, **kw), "num_queries", None)
    except Exception:  # pylint: disable=broad-except
      q = None  # the trainer reports a bad model config itself
  return int(q) if q else None


def max_boxes(config) -> int:
  t = int(dense.option(config, "max_boxes", num_queries(config) or 100))
  q = num_queries(config)
  if t < 1:
    raise UserError(f"config.task_kwargs.max_boxes={t} must be >= 1.")
  if q is not None and t > q:
    raise UserError(f"config.task_kwargs.max_boxes={t} exceeds config.model.num_queries={q}: "
                    f"a set loss matches each object to its own query; use max_boxes <= {q}.")
  return t


# ----------------------------------------------------------------------------
# Sources.


def pack_records(records, what: str, limit: int, queries: int | None):
  """Records (shapes.generate / load_coco) -> (images [N, S, S, 3], targets [N, T, 5]).

  Boxes are clipped to the image; zero-area ones dropped with a warning; more
  objects than `limit` is a UserError naming num_queries and the count.
  """
  images = np.stack([r["image"] for r in records])
  h, w = images.shape[1:3]
  counts, rows, dropped = [], [], 0
  for r in records:
    b = np.asarray(r["boxes"], np.float32).reshape(-1, 4)
    b = np.clip(b, 0, [w, h, w, h]) / np.array([w, h, w, h], np.float32)
    keep = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
    dropped += int((~keep).sum())
    rows.append(np.concatenate([b[keep], (np.asarray(r["classes"])[keep] - 1)[:, None]], 1))
    counts.append(int(keep.sum()))
  if dropped:
    warnings.warn(f"{what}: dropped {dropped} zero-area box(es) (after clipping to the image).")
  most = max(counts)
  if most > limit:
    raise UserError(f"{what}: an image has {most} objects but the model has "
                    f"num_queries={queries} (max_boxes={limit}); raise num_queries / max_boxes "
                    f"to at least {most}.")
  targets = np.full((len(records), max(most, 1), 5), -1, np.float32)
  for i, r in enumerate(rows):
    targets[i, :len(r)] = r
  return images, targets


_CACHE = {}


def _shapes_records(split, n, config):
  size = int(dense.option(config, "shapes_image_size", config.input.image_size))
  key = (split, n, config.seed, size, int(dense.option(config, "shapes_max_objects", 4)),
         tuple(dense.option(config, "shapes_size_range", (0.1, 0.25))))
  if key not in _CACHE:
    if len(_CACHE) >= 4:
      _CACHE.clear()
    _CACHE[key] = shapes.generate(split, n, config.seed, *key[3:])
  return _CACHE[key]


def _array_source(config, train_records, eval_records, class_names):
  limit, q = max_boxes(config), num_queries(config)
  train = pack_records(train_records, "detection train split", limit, q)
  eval_ = pack_records(eval_records, "detection eval split", limit, q)
  info = DatasetInfo(num_classes=len(class_names), num_train_examples=len(train[0]),
                     num_eval_examples=len(eval_[0]), class_names=tuple(class_names))
  return source_lib.ArraySource(info=info, train_data=train, eval_data=eval_)


def _shapes_source(config):
  eval_split = config.dataset.eval_split
  if eval_split not in ("validation", "test"):
    raise UserError(f"config.dataset.eval_split={eval_split!r}: the shapes set has "
                    "'validation' and 'test' for evaluation.")
  train = _shapes_records("train", dense.option(config, "num_train_images", 2000), config)
  eval_ = _shapes_records(eval_split, dense.option(config, "num_eval_images", 500), config)
  return _array_source(config, train, eval_, shapes.CLASS_NAMES)


def read_coco_split(directory: str, split: str, categories=None):
  """One split of a COCO-format folder: (image paths [N], (h, w) per image,
  boxes per image (xyxy pixels), classes per image (0..C-1), the category
  list, skip counts).

  Layout: `directory/annotations/instances_<split>.json` and the images under
  `directory/<split>/<file_name>`; any image sizes. Checks (UserError naming
  the file and the entry): an image file that is missing or whose size
  differs from the JSON's width / height, an annotation whose image_id is not
  among the images, an annotation whose category_id is not among the
  categories (a class id above num_classes), a malformed bbox. Counted skips
  (one warning with the counts): crowd annotations (iscrowd=1, which COCO
  evaluation ignores and DETR drops), boxes clipped to their image, boxes with
  no area inside it.
  """
  import json  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  path = os.path.join(directory, "annotations", f"instances_{split}.json")
  if not os.path.isfile(path):
    raise UserError(f"No COCO annotations at {path}: a COCO folder holds "
                    f"annotations/instances_<split>.json and <split>/<images>.")
  try:
    with open(path) as f:
      coco = json.load(f)
    images, anns = coco["images"], coco.get("annotations", [])
    cats = sorted(coco["categories"], key=lambda c: c["id"])
  except (ValueError, KeyError, TypeError) as e:
    raise UserError(f"{path} is not COCO JSON with images / categories ({e}).") from None
  if categories is not None and [c["id"] for c in cats] != [c["id"] for c in categories]:
    raise UserError(f"{path}: its categories {[c['id'] for c in cats]} differ from the train "
                    f"split's {[c['id'] for c in categories]}; both splits need one list.")
  to_class = {c["id"]: i for i, c in enumerate(cats)}
  by_id, paths, sizes, missing = {}, [], [], []
  for info in sorted(images, key=lambda i: i["id"]):
    file = os.path.join(directory, split, info["file_name"])
    if not os.path.isfile(file):
      missing.append(file)
      continue
    with Image.open(file) as im:
      w, h = im.size
    if (info.get("height", h), info.get("width", w)) != (h, w):
      raise UserError(f"COCO image {file} is {w}x{h} but {path} says "
                      f"{info.get('width')}x{info.get('height')}; fix the file or the JSON.")
    by_id[info["id"]] = (len(paths), h, w)
    paths.append(file)
    sizes.append((h, w))
  if missing:
    raise UserError(f"{path} names {len(missing)} image file(s) that do not exist, e.g. "
                    f"{missing[0]}; add them or remove those entries (and their "
                    "annotations) from the JSON.")
  if not paths:
    raise UserError(f"{path} lists no images.")
  boxes = [[] for _ in paths]
  classes = [[] for _ in paths]
  skipped = dict(crowd=0, clipped=0, outside=0)
  for ann in anns:
    if ann.get("image_id") not in by_id:
      raise UserError(f"{path}: annotation {ann.get('id')} names image_id "
                      f"{ann.get('image_id')}, which is not among its images; fix or drop it.")
    if ann.get("category_id") not in to_class:
      raise UserError(f"{path}: annotation {ann.get('id')} has category_id "
                      f"{ann.get('category_id')}, not one of the {len(cats)} categories "
                      f"{sorted(to_class)} (class ids above num_classes); fix or drop it.")
    if ann.get("iscrowd", 0):
      skipped["crowd"] += 1
      continue
    i, h, w = by_id[ann["image_id"]]
    try:
      x, y, bw, bh = (float(v) for v in ann["bbox"])
    except (KeyError, TypeError, ValueError):
      raise UserError(f"{path}: annotation {ann.get('id')} has no bbox [x, y, w, h] "
                      f"(got {ann.get('bbox')!r}).") from None
    box = np.array([x, y, x + bw, y + bh])
    inside = np.clip(box, 0, [w, h, w, h])
    if not (inside[2] > inside[0] and inside[3] > inside[1]):
      skipped["outside"] += 1
      continue
    skipped["clipped"] += int(not np.array_equal(box, inside))
    boxes[i].append(inside)
    classes[i].append(to_class[ann["category_id"]])
  return paths, sizes, boxes, classes, cats, skipped


def _coco_targets(boxes, classes, sizes, limit, queries, what):
  """Per-image pixel boxes -> targets [N, T, 5] (normalised xyxy, class; -1 padding)."""
  most = max([len(c) for c in classes] + [1])
  if most > limit:
    raise UserError(f"{what}: an image has {most} objects but the model has "
                    f"num_queries={queries} (max_boxes={limit}); raise num_queries / max_boxes "
                    f"to at least {most}.")
  targets = np.full((len(boxes), most, 5), -1, np.float32)
  for i, (b, c, (h, w)) in enumerate(zip(boxes, classes, sizes)):
    if c:
      targets[i, :len(c), :4] = np.asarray(b) / np.array([w, h, w, h])
      targets[i, :len(c), 4] = c
  return targets


def _read_file(path, targets):
  image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
  return image, targets


def _coco_dir_source(config, directory):
  """Images of any sizes read from disk per example (see read_coco_split)."""
  if not os.path.isdir(directory):
    raise UserError(f"config.dataset.name='coco_dir:{directory}': no such folder.")
  limit, q = max_boxes(config), num_queries(config)
  splits, cats, skipped = [], None, {}
  words = dict(crowd="crowd annotation(s) skipped", clipped="box(es) clipped to the image",
               outside="box(es) with no area inside the image dropped")
  for split in (config.dataset.train_split, config.dataset.eval_split):
    paths, sizes, boxes, classes, cats, skips = read_coco_split(directory, split, cats)
    what = f"COCO folder {directory}, split {split}"
    targets = _coco_targets(boxes, classes, sizes, limit, q, what)
    splits.append((np.asarray(paths), targets))
    skipped.update({f"{split}: {v} {words[k]}": v for k, v in skips.items() if v})
  if skipped:
    warnings.warn(f"COCO folder {directory}: " + "; ".join(skipped) + ".")
  info = DatasetInfo(num_classes=len(cats), num_train_examples=len(splits[0][0]),
                     num_eval_examples=len(splits[1][0]),
                     class_names=tuple(c["name"] for c in cats))
  return source_lib.ArraySource(info=info, train_data=splits[0], eval_data=splits[1],
                                load_fn=_read_file, has_paths=True, corrupt_images="error")


class _TfdsDetSource(source_lib.TfdsSource):
  """A prepared TFDS detection dataset (coco/2017 layout)."""

  def __init__(self, config, name):  # pylint: disable=super-init-not-called
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    data_dir = config.dataset.get("data_dir")
    try:
      builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.DatasetNotFoundError:
      raise UserError(f"config.dataset.name='tfds:{name}': {name!r} is not a TFDS "
                      "dataset.") from None
    self.builder, self.name, self.data_dir = builder, name, data_dir
    features = builder.info.features
    if "image" not in features or "objects" not in features:
      raise UserError(f"TFDS dataset {name!r} has no image / objects features (its features "
                      f"are {list(features.keys())}); detection reads the coco/2017 layout.")
    label = features["objects"]["label"]
    names = tuple(label.names) if getattr(label, "names", None) else tuple(
        str(i) for i in range(label.num_classes))
    self.decoders = tfds.decode.PartialDecoding(
        {"image": True, "objects": {"bbox": True, "label": True}})
    self.train_split = config.dataset.train_split
    self.eval_split = config.dataset.eval_split
    self.shuffle_buffer = int(config.dataset.get("shuffle_buffer", 10_000))
    source_lib.Source.__init__(self, info=DatasetInfo(
        num_classes=len(names), num_train_examples=self.split_size(self.train_split),
        num_eval_examples=self.split_size(self.eval_split), class_names=names))

  def select(self, example):
    """(image, targets [K, 5]: x0, y0, x1, y1 normalised, class) of one TFDS example."""
    b = tf.cast(example["objects"]["bbox"], tf.float32)  # ymin, xmin, ymax, xmax
    c = tf.cast(example["objects"]["label"], tf.float32)
    n = tf.minimum(tf.shape(b)[0], tf.shape(c)[0])  # equal in real data (not in mocks)
    b, c = b[:n], c[:n]
    return example["image"], tf.stack([b[:, 1], b[:, 0], b[:, 3], b[:, 2], c], 1)


def make_source(config) -> source_lib.Source:
  """The detection source config.dataset names (shapes, coco_dir:, tfds:)."""
  name = config.dataset.name
  if name == "shapes":
    return _shapes_source(config)
  if isinstance(name, str) and name.startswith("coco_dir:"):
    return _coco_dir_source(config, name[len("coco_dir:"):])
  if isinstance(name, str) and name.startswith("tfds:"):
    max_boxes(config)
    return _TfdsDetSource(config, name[len("tfds:"):])
  raise UserError(f"config.dataset.name={name!r}: detection reads 'shapes' (embedded), "
                  "'coco_dir:<folder>' or 'tfds:<name>' (e.g. tfds:coco/2017).")


def get_dataset_info(config) -> DatasetInfo:
  return make_source(config).info


# ----------------------------------------------------------------------------
# Per-example transforms (TF, stateless).


RESIZE_MODES = ("square", "detr")


def _settings(config):
  opts = dense.settings(config)
  opts["max_boxes"] = max_boxes(config)
  opts["min_box"] = float(dense.option(config, "min_box_size", 1.0))
  opts["resize"] = dense.option(config, "resize", "square")
  if opts["resize"] not in RESIZE_MODES:
    raise UserError(f"config.task_kwargs.resize={opts['resize']!r}: use 'square' (resize to "
                    "image_size x image_size) or 'detr' (DETR's protocol: aspect kept, "
                    "padded with a pixel mask; vitjax/data/detr_protocol.py).")
  if opts["resize"] == "detr":
    opts = detr_protocol.settings(config, opts)
  return opts


def _example_fns(opts):
  """(train_example, eval_example, eval padding) of the chosen resize protocol."""
  if opts["resize"] == "detr":
    return (detr_protocol.train_example, detr_protocol.eval_example,
            detr_protocol.eval_padding(opts))
  size, t = opts["size"], opts["max_boxes"]
  padding = dict(
      boxes=tf.zeros([t, 4]), labels=tf.zeros([t], tf.int32), box_valid=tf.zeros([t], bool),
      image=tf.zeros([size, size, 3], tf.float32), mask=tf.constant(False),
      orig_size=tf.constant([float(size)] * 2))
  return train_example, eval_example, padding


def _decode(image, targets):
  if image.shape.rank == 3 and image.shape[-1] == 1:
    image = tf.image.grayscale_to_rgb(image)
  targets = tf.reshape(tf.cast(targets, tf.float32), [-1, 5])
  targets = tf.boolean_mask(targets, targets[:, 4] >= 0)
  boxes = tf.clip_by_value(targets[:, :4], 0.0, 1.0)  # outside the image: clipped
  return tf.image.convert_image_dtype(image, tf.float32), boxes, tf.cast(targets[:, 4], tf.int32)


def pack_targets(boxes, labels, hw, max_boxes: int, min_box: float):
  """xyxy pixel boxes of an image of size hw = (h, w) -> DETR targets padded to
  max_boxes: normalised (cx, cy, w, h), labels and box_valid; boxes narrower or
  lower than min_box pixels are dropped; more than max_boxes is an error."""
  keep = (boxes[:, 2] - boxes[:, 0] >= min_box) & (boxes[:, 3] - boxes[:, 1] >= min_box)
  boxes, labels = tf.boolean_mask(boxes, keep), tf.boolean_mask(labels, keep)
  t, n = max_boxes, tf.shape(labels)[0]
  check = tf.debugging.assert_less_equal(n, t, message=_TOO_MANY)
  with tf.control_dependencies([check]):
    n = tf.identity(n)
  hw = tf.cast(hw, tf.float32)
  boxes = boxes / tf.stack([hw[1], hw[0], hw[1], hw[0]])
  cxcywh = tf.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2,
                     boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], 1)
  pad = t - n
  return dict(boxes=tf.ensure_shape(tf.pad(cxcywh, [[0, pad], [0, 0]]), [t, 4]),
              labels=tf.ensure_shape(tf.pad(labels, [[0, pad]]), [t]),
              box_valid=tf.ensure_shape(tf.range(t) < n, [t]))


def _finish_targets(boxes, labels, size, opts):
  """xyxy pixel boxes of a size x size image -> padded cx, cy, w, h targets."""
  return pack_targets(boxes, labels, (size, size), opts["max_boxes"], opts["min_box"])


def train_example(image, targets, seed, opts):
  """Augments one (image, targets) pair with the stateless seed `seed`."""
  image, boxes, labels = _decode(image, targets)
  seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 8))
  image = dense.normalise(dense.color_jitter(image, seeds[:3], opts["jitter"]), opts)
  size = opts["size"]
  hw = tf.cast(tf.shape(image)[:2], tf.float32)
  scale = tf.random.stateless_uniform([], seeds[3], *opts["scale"])
  new = tf.maximum(tf.cast(tf.round(hw * scale * size / tf.reduce_min(hw)), tf.int32), 1)
  image = tf.image.resize(image, new, "bilinear")
  newf = tf.cast(new, tf.float32)
  boxes = boxes * tf.stack([newf[1], newf[0], newf[1], newf[0]])
  pad = tf.maximum(size - new, 0)
  image = tf.pad(image, [[0, pad[0]], [0, pad[1]], [0, 0]])
  room = tf.shape(image)[:2] - size + 1
  oy = tf.random.stateless_uniform([], seeds[4], 0, room[0], tf.int32)
  ox = tf.random.stateless_uniform([], seeds[5], 0, room[1], tf.int32)
  image = image[oy:oy + size, ox:ox + size]
  off = tf.cast(tf.stack([ox, oy, ox, oy]), tf.float32)
  boxes = tf.clip_by_value(boxes - off, 0.0, float(size))  # cut by the crop: clipped
  if opts["flip"]:
    flip = tf.random.stateless_uniform([], seeds[6]) < 0.5
    image = tf.where(flip, image[:, ::-1], image)
    flipped = tf.stack([size - boxes[:, 2], boxes[:, 1], size - boxes[:, 0], boxes[:, 3]], 1)
    boxes = tf.where(flip, flipped, boxes)
  out = _finish_targets(boxes, labels, float(size), opts)
  out["image"] = tf.ensure_shape(image, [size, size, 3])
  return out


def eval_example(image, targets, opts):
  image, boxes, labels = _decode(image, targets)
  size = opts["size"]
  orig = tf.cast(tf.shape(image)[:2], tf.float32)
  image = tf.image.resize(dense.normalise(image, opts), [size, size], "bilinear")
  out = _finish_targets(boxes * size, labels, float(size), dict(opts, min_box=1e-6))
  out.update(image=image, mask=tf.constant(True), orig_size=orig)
  return out


def _explain(what):
  """Turns the in-graph max_boxes check into a UserError naming `what`."""

  def explain(error):
    if isinstance(error, tf.errors.InvalidArgumentError) and _TOO_MANY in str(error):
      raise UserError(f"{what}: an image has more objects than max_boxes (the model's "
                      "num_queries unless config.task_kwargs.max_boxes is set); raise "
                      "config.model.num_queries / max_boxes.") from None
    if isinstance(error, tf.errors.InvalidArgumentError) and (
        detr_protocol._CANVAS_CHECK in str(error)):  # pylint: disable=protected-access
      raise UserError(f"{what}: a resized image does not fit config.task_kwargs.canvas; "
                      "make it at least (max_size, max_size).") from None
  return explain


# ----------------------------------------------------------------------------
# Iterators (the trainer's API).


def train_iterator(config, *, start_step: int = 0, process_index: int = 0,
                   process_count: int = 1) -> Iterator[dict]:
  """Infinite train batches from `start_step` on (deterministic in seed, step)."""
  source_lib.check_process(process_index, process_count)
  source_lib.local_batch_size(config.batch_size, process_count, "config.batch_size")
  opts = _settings(config)
  example = _example_fns(opts)[0]
  source = make_source(config)
  spe = input_pipeline.steps_per_epoch(config, source.info)
  return source_lib.train_batches(
      source, lambda raw, seed: example(*source.load(*raw), seed, opts),
      seed=config.seed, batch_size=config.batch_size, steps_per_epoch=spe,
      start_step=start_step, process_index=process_index, process_count=process_count,
      explain=_explain("detection train split"))


def eval_iterator(config, *, process_index: int = 0, process_count: int = 1) -> Iterator[dict]:
  """One pass over the eval split; rows beyond the data have mask=False."""
  source_lib.check_process(process_index, process_count)
  source_lib.local_batch_size(config.eval_batch_size, process_count, "config.eval_batch_size")
  opts = _settings(config)
  _, example, padding = _example_fns(opts)
  source = make_source(config)
  return source_lib.eval_batches(
      source, lambda raw: example(*source.load(*raw), opts), padding,
      batch_size=config.eval_batch_size, process_index=process_index,
      process_count=process_count, explain=_explain("detection eval split"))
