"""A folder of images and label PNGs (the ADE20K / mmseg layout) as a segmentation source.

  <root>/images/<split>/<name>.jpg   (or .jpeg / .png / .bmp)
  <root>/annotations/<split>/<name>.png   one class id per pixel

config.dataset.name = 'folder:<root>'; the splits are config.dataset.train_split
and eval_split (ADE20K: 'training' / 'validation'). An image and its label map
pair up by file name without extension; hidden files are ignored.

Label values (task_kwargs): class ids 0 .. num_classes - 1 (num_classes is
required) and `ignore_index` (255) for unlabelled pixels. With
`reduce_zero_label=True` (ADE20K) the PNG's 0 means "unlabelled": 0 becomes
ignore_index and every other id v becomes v - 1 (255 stays ignored), as
mmseg's `LoadAnnotations(reduce_zero_label=True)` and HF's
`do_reduce_labels` do. Palette ('P') PNGs are read as palette indices.

Every pair is checked when the split is indexed (headers for the sizes, the
label pixels for the ids; cached per process):
  - an image without a label PNG (or a label PNG without an image),
  - a label PNG whose size differs from its image's,
  - a label id that is neither a class (< num_classes, after reduction) nor
    ignore_index.
With task_kwargs.bad_labels='error' (default) the first such pair raises a
UserError naming the files; with 'skip' the bad pairs are left out and
counted in one warning per split. Nothing is written anywhere.
"""

import concurrent.futures
import dataclasses
import logging
import os

import numpy as np
import tensorflow as tf
from PIL import Image

from vitjax.data import source as source_lib
from vitjax.data.source import DatasetInfo
from vitjax.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
BAD_LABEL_POLICIES = ("error", "skip")
_log = logging.getLogger(__name__)
_CACHE = {}


@dataclasses.dataclass(frozen=True)
class Split:
  """The usable (image, label PNG) pairs of one split, sorted by name."""
  images: tuple[str, ...]
  labels: tuple[str, ...]
  sizes: tuple[tuple[int, int], ...]  # (height, width) of each pair
  skipped: tuple[tuple[str, str], ...]  # (file, reason) of the left-out pairs


def reduce_zero_label(labels: np.ndarray, ignore_index: int) -> np.ndarray:
  """ADE20K's convention: 0 -> ignore_index, v -> v - 1, ignore_index stays."""
  labels = labels.astype(np.int64)
  out = labels - 1
  out[(labels == 0) | (labels == ignore_index)] = ignore_index
  return out


def read_label(path: str) -> np.ndarray:
  """A label PNG as int32 [H, W] (palette PNGs: the palette indices)."""
  with Image.open(path) as im:
    if im.mode not in ("L", "P", "I", "I;16", "1"):
      raise UserError(f"{path}: a label PNG must hold one class id per pixel (an 8- or "
                      f"16-bit grey or palette PNG), not mode {im.mode!r}.")
    return np.asarray(im, dtype=np.int32)


def _files(folder: str) -> dict:
  if not os.path.isdir(folder):
    return {}
  return {os.path.splitext(n)[0]: os.path.join(folder, n) for n in sorted(os.listdir(folder))
          if not n.startswith(".") and os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS}


def _check_pair(image: str, label: str, num_classes: int, ignore: int, reduce: bool):
  """((height, width), None) for a good pair, (None, reason) for a bad one."""
  try:
    with Image.open(image) as im:
      w, h = im.size
    values = read_label(label)
  except UserError as e:
    return None, f"{e}".rstrip(".")
  except Exception as e:  # pylint: disable=broad-except
    return None, f"{image} or {label} cannot be read ({type(e).__name__}: {e})"
  if values.shape != (h, w):
    return None, (f"label PNG {label} is {values.shape[1]}x{values.shape[0]} (WxH) but its "
                  f"image {image} is {w}x{h}; a label map must have its image's size")
  ids = np.unique(values)
  used = reduce_zero_label(ids, ignore) if reduce else ids
  bad = ids[(used != ignore) & ((used < 0) | (used >= num_classes))]
  if bad.size:
    return None, (f"label PNG {label} holds id {int(bad[0])}, which is neither a class "
                  f"(0..{num_classes - 1}{' after reduce_zero_label' if reduce else ''}) "
                  f"nor ignore_index={ignore}; fix task_kwargs.num_classes / ignore_index"
                  f"{'' if reduce else ' / reduce_zero_label'} or the file")
  return (h, w), None


def index_split(root: str, split: str, num_classes: int, ignore: int, reduce: bool,
                policy: str) -> Split:
  """The checked pairs of `split` (cached per process; see the module docstring)."""
  key = (root, split, num_classes, ignore, reduce, policy)
  if key in _CACHE:
    return _CACHE[key]
  image_dir = os.path.join(root, "images", split)
  label_dir = os.path.join(root, "annotations", split)
  images, labels = _files(image_dir), _files(label_dir)
  if not images:
    raise UserError(f"config.dataset.name='folder:{root}': no images in {image_dir} (the "
                    f"layout is <root>/images/<split>/*.jpg + <root>/annotations/<split>/"
                    f"*.png; split {split!r} from config.dataset.train_split / eval_split).")
  skipped = [(p, f"image {p} has no label PNG {n}.png in {label_dir}")
             for n, p in images.items() if n not in labels]
  skipped += [(p, f"label PNG {p} has no image {n}.* in {image_dir}")
              for n, p in labels.items() if n not in images]
  names = [n for n in images if n in labels]
  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    checked = list(pool.map(lambda n: _check_pair(images[n], labels[n], num_classes, ignore,
                                                  reduce), names))
  good = [(n, hw) for n, (hw, _) in zip(names, checked) if hw is not None]
  skipped += [(images[n], why) for n, (_, why) in zip(names, checked) if why is not None]
  if skipped and policy == "error":
    raise UserError(f"Segmentation folder {root}, split {split!r}: {skipped[0][1]}. "
                    f"({len(skipped)} bad pair(s) in all; task_kwargs.bad_labels='skip' "
                    "leaves them out.)")
  if skipped:
    _log.warning("Segmentation folder %s, split %r: %d of %d pairs left out "
                 "(bad_labels='skip'), e.g. %s", root, split, len(skipped),
                 len(skipped) + len(good), *skipped[0][1:])
  if not good:
    raise UserError(f"Segmentation folder {root}, split {split!r}: no usable image + label "
                    "PNG pair.")
  out = Split(images=tuple(images[n] for n, _ in good), labels=tuple(labels[n] for n, _ in good),
              sizes=tuple(hw for _, hw in good), skipped=tuple(skipped))
  _CACHE[key] = out
  return out


def _decode_label(path):
  return read_label(path.decode() if isinstance(path, bytes) else str(path))


def make_source(config, root: str, option) -> source_lib.ArraySource:
  """The source of 'folder:<root>' (option(config, key, default) reads task_kwargs)."""
  num_classes = option(config, "num_classes", None)
  if not isinstance(num_classes, int) or num_classes < 2:
    raise UserError(f"config.dataset.name='folder:{root}' needs config.task_kwargs."
                    f"num_classes (an integer >= 2: the classes of the label PNGs), got "
                    f"{num_classes!r}.")
  ignore = int(option(config, "ignore_index", 255))
  reduce = bool(option(config, "reduce_zero_label", False))
  policy = option(config, "bad_labels", "error")
  if policy not in BAD_LABEL_POLICIES:
    raise UserError(f"config.task_kwargs.bad_labels={policy!r}: use one of "
                    f"{BAD_LABEL_POLICIES}.")
  splits = [index_split(root, s, num_classes, ignore, reduce, policy)
            for s in (config.dataset.train_split, config.dataset.eval_split)]

  def load(image_path, label_path):
    image = tf.io.decode_image(tf.io.read_file(image_path), channels=3,
                               expand_animations=False)
    label = tf.numpy_function(_decode_label, [label_path], tf.int32, stateful=False)
    label = tf.ensure_shape(label, [None, None])
    if reduce:
      label = tf.where((label == 0) | (label == ignore), ignore, label - 1)
    return image, label

  info = DatasetInfo(num_classes=num_classes, num_train_examples=len(splits[0].images),
                     num_eval_examples=len(splits[1].images),
                     class_names=tuple(str(i) for i in range(num_classes)))
  source = source_lib.ArraySource(
      info=info, load_fn=load, has_paths=True,
      train_data=tuple(np.array(x) for x in (splits[0].images, splits[0].labels)),
      eval_data=tuple(np.array(x) for x in (splits[1].images, splits[1].labels)))
  source.eval_sizes = splits[1].sizes
  return source
