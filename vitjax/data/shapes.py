"""The embedded 'shapes' dataset: a procedural detection / segmentation set
that needs no download.

Each image (default 64x64 RGB) shows 1..`max_objects` circles, squares and
triangles of several sizes and colours on a textured background (uniform
noise, a linear gradient or stripes). Objects never overlap (each is placed
away from the others, with a one-pixel gap), so every instance mask is the
whole object, its box is tight and the semantic mask is their union.

Everything is a pure function of (seed, split, index): image `i` of a split
is the same whatever `n` is asked for, on every machine (numpy's PCG64).
The splits draw from disjoint streams:

    generate('train', n, seed)  generate('validation', n, seed)  generate('test', n, seed)

A record (`generate` returns a list of them) is a dict:
  image          uint8 [S, S, 3]
  semantic_mask  uint8 [S, S]: 0 = background, 1 = circle, 2 = square, 3 = triangle
  instance_masks bool  [K, S, S]: one per object
  boxes          float32 [K, 4]: (x0, y0, x1, y1) pixel edges, x1 / y1 exclusive,
                 i.e. the tight box of the mask (COCO bbox = (x0, y0, x1 - x0, y1 - y0))
  classes        int32 [K]: 1..3 (CLASS_NAMES[c - 1])
  id, split, index

`write_coco(dir, split, ...)` writes `dir/<split>/*.png` plus
`dir/annotations/instances_<split>.json` (COCO: bbox [x, y, w, h], area =
mask pixels, iscrowd 0, segmentation as compressed RLE); `load_coco(dir,
split)` reads such a folder (any COCO instances file with RLE or polygon
segmentations) back into records through pycocotools.
"""

import json
import os
from typing import Sequence

import numpy as np

from vitjax.errors import UserError

CLASS_NAMES = ("circle", "square", "triangle")
SPLITS = ("train", "validation", "test")
BACKGROUNDS = ("noise", "gradient", "stripes")
_SPLIT_STREAM = {"train": 0, "validation": 1, "test": 2}


def _check(split, image_size, max_objects, size_range):
  if split not in SPLITS:
    raise UserError(f"shapes: unknown split {split!r}; use one of {SPLITS}.")
  if not isinstance(image_size, (int, np.integer)) or image_size < 16:
    raise UserError(f"shapes: image_size must be an integer >= 16, got {image_size!r}.")
  if not isinstance(max_objects, (int, np.integer)) or max_objects < 1:
    raise UserError(f"shapes: max_objects must be an integer >= 1, got {max_objects!r}.")
  lo, hi = size_range
  if not 0 < lo <= hi <= 0.5 or lo * image_size < 2:
    raise UserError(
        f"shapes: size_range={tuple(size_range)} (object half-size as a fraction of the "
        f"image) needs 0 < min <= max <= 0.5 and min * image_size >= 2 pixels "
        f"(image_size={image_size}: min >= {2 / image_size:.3f}).")


def _colour(rng, avoid: np.ndarray | None = None) -> np.ndarray:
  """A random RGB colour at least 90 (L1 / 3 >= 30) away from `avoid`."""
  for _ in range(100):
    c = rng.integers(0, 256, 3).astype(np.float32)
    if avoid is None or np.abs(c - avoid).mean() >= 90:
      return c
  return 255.0 - avoid  # pragma: no cover (always found in practice)


def _background(rng, s: int):
  """A textured background [s, s, 3] float32 and its mean colour."""
  kind = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
  yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
  a, b = _colour(rng), _colour(rng)
  if kind == "noise":
    img = a + rng.normal(0, 20, (s, s, 3)).astype(np.float32)
  else:
    angle = rng.uniform(0, np.pi)
    t = (xx * np.cos(angle) + yy * np.sin(angle))
    if kind == "gradient":
      t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
      # Keep the two ends close enough that one object colour contrasts with both.
      b = a + (b - a) * 0.35
      img = a + (b - a) * t[..., None]
    else:
      period = rng.uniform(4, s / 4)
      b = a + (b - a) * 0.35
      img = np.where((np.floor(t / period) % 2 == 0)[..., None], a, b)
  return img, (img.reshape(-1, 3).mean(0)), kind


def _shape_mask(cls: int, cx, cy, r, s: int) -> np.ndarray:
  """Boolean [s, s] mask of a circle (1), square (2) or triangle (3)."""
  yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) + 0.5  # pixel centres
  dx, dy = xx - cx, yy - cy
  if cls == 1:
    return dx * dx + dy * dy <= r * r
  if cls == 2:
    return (np.abs(dx) <= r * 0.9) & (np.abs(dy) <= r * 0.9)
  # Upward triangle: apex (0, -r), base corners (+-r, +r) relative to the centre.
  return (dy <= r) & (2 * dx <= dy + r) & (-2 * dx <= dy + r)


def _dilate(m: np.ndarray) -> np.ndarray:
  out = m.copy()
  out[1:] |= m[:-1]
  out[:-1] |= m[1:]
  out[:, 1:] |= out[:, :-1].copy()
  out[:, :-1] |= out[:, 1:].copy()
  return out


def generate_one(split: str, index: int, seed: int = 0, image_size: int = 64,
                 max_objects: int = 4, size_range: Sequence[float] = (0.1, 0.25)) -> dict:
  """Record `index` of `split` (see the module docstring)."""
  _check(split, image_size, max_objects, size_range)
  s = int(image_size)
  rng = np.random.default_rng([int(seed) % 2**32, _SPLIT_STREAM[split], int(index)])
  img, bg_mean, _ = _background(rng, s)
  n = int(rng.integers(1, max_objects + 1))
  taken = np.zeros((s, s), bool)
  semantic = np.zeros((s, s), np.uint8)
  masks, boxes, classes = [], [], []
  for _ in range(n):
    for _attempt in range(20):
      cls = int(rng.integers(1, 4))
      r = rng.uniform(size_range[0], size_range[1]) * s
      cx, cy = rng.uniform(r, s - r), rng.uniform(r, s - r)
      m = _shape_mask(cls, cx, cy, r, s)
      if m.sum() >= 4 and not (m & taken).any():
        break
    else:
      continue  # no room left for this object
    taken |= _dilate(m)
    colour = _colour(rng, bg_mean)
    img = np.where(m[..., None], colour + rng.normal(0, 6, (s, s, 3)).astype(np.float32), img)
    semantic[m] = cls
    ys, xs = np.nonzero(m)
    masks.append(m)
    boxes.append((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))
    classes.append(cls)
  return dict(
      image=np.clip(np.round(img), 0, 255).astype(np.uint8),
      semantic_mask=semantic,
      instance_masks=np.array(masks, bool).reshape(-1, s, s),
      boxes=np.array(boxes, np.float32).reshape(-1, 4),
      classes=np.array(classes, np.int32),
      id=int(index) + 1, split=split, index=int(index))


def generate(split: str, n: int, seed: int = 0, image_size: int = 64, max_objects: int = 4,
             size_range: Sequence[float] = (0.1, 0.25), start: int = 0) -> list[dict]:
  """Records `start` .. `start + n - 1` of `split` (deterministic in seed and index)."""
  if not isinstance(n, (int, np.integer)) or n < 1:
    raise UserError(f"shapes: the number of images must be an integer >= 1, got {n!r}.")
  return [generate_one(split, i, seed, image_size, max_objects, size_range)
          for i in range(start, start + n)]


def as_arrays(records: Sequence[dict]) -> tuple[np.ndarray, np.ndarray]:
  """Stacked images uint8 [N, S, S, 3] and semantic masks uint8 [N, S, S]."""
  return (np.stack([r["image"] for r in records]),
          np.stack([r["semantic_mask"] for r in records]))


# ----------------------------------------------------------------------------
# COCO format.


def _annotation_path(directory, split):
  return os.path.join(directory, "annotations", f"instances_{split}.json")


def write_coco(directory: str, split: str, n: int = 100, seed: int = 0, image_size: int = 64,
               max_objects: int = 4, size_range: Sequence[float] = (0.1, 0.25),
               records: Sequence[dict] | None = None) -> str:
  """Writes `split` (generated, or the given `records`) as COCO; returns the JSON path."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from pycocotools import mask as mask_utils  # pylint: disable=g-import-not-at-top
  if records is None:
    records = generate(split, n, seed, image_size, max_objects, size_range)
  os.makedirs(os.path.join(directory, split), exist_ok=True)
  os.makedirs(os.path.join(directory, "annotations"), exist_ok=True)
  images, annotations = [], []
  for r in records:
    name = f"{r['id']:06d}.png"
    Image.fromarray(r["image"]).save(os.path.join(directory, split, name))
    h, w = r["image"].shape[:2]
    images.append(dict(id=r["id"], file_name=name, height=h, width=w))
    for m, box, cls in zip(r["instance_masks"], r["boxes"], r["classes"]):
      rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
      rle["counts"] = rle["counts"].decode("ascii")
      x0, y0, x1, y1 = (float(v) for v in box)
      annotations.append(dict(
          id=len(annotations) + 1, image_id=r["id"], category_id=int(cls),
          bbox=[x0, y0, x1 - x0, y1 - y0], area=float(m.sum()), iscrowd=0,
          segmentation=rle))
  coco = dict(
      info=dict(description=f"vitjax shapes, split {split}"), images=images,
      annotations=annotations,
      categories=[dict(id=i + 1, name=c, supercategory="shape")
                  for i, c in enumerate(CLASS_NAMES)])
  path = _annotation_path(directory, split)
  with open(path, "w") as f:
    json.dump(coco, f)
  return path


def load_coco(directory: str, split: str) -> list[dict]:
  """Reads `directory/annotations/instances_<split>.json` + images into records.

  Category ids become classes 1..C in the order of the sorted ids. Refuses
  (UserError) images whose size differs from the JSON, annotations with
  empty masks or degenerate (zero-width / zero-height) boxes.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from pycocotools.coco import COCO  # pylint: disable=g-import-not-at-top
  path = _annotation_path(directory, split)
  if not os.path.isfile(path):
    raise UserError(f"No COCO annotations at {path}; write them with "
                    "vitjax.data.shapes.write_coco(directory, split).")
  import contextlib, io  # pylint: disable=g-import-not-at-top,multiple-imports
  with contextlib.redirect_stdout(io.StringIO()):  # COCO() prints progress
    coco = COCO(path)
  cat_ids = sorted(coco.getCatIds())
  to_class = {c: i + 1 for i, c in enumerate(cat_ids)}
  records = []
  for image_id in sorted(coco.getImgIds()):
    info = coco.loadImgs(image_id)[0]
    file = os.path.join(directory, split, info["file_name"])
    image = np.asarray(Image.open(file).convert("RGB"))
    h, w = info["height"], info["width"]
    if image.shape[:2] != (h, w):
      raise UserError(f"COCO image {file} is {image.shape[1]}x{image.shape[0]} but "
                      f"{path} says {w}x{h}; fix the file or the JSON.")
    if image.size == 0:
      raise UserError(f"COCO image {file} is empty.")
    semantic = np.zeros((h, w), np.uint8)
    masks, boxes, classes = [], [], []
    for ann in coco.loadAnns(coco.getAnnIds(imgIds=image_id)):
      x, y, bw, bh = ann["bbox"]
      if bw <= 0 or bh <= 0:
        raise UserError(f"COCO annotation {ann['id']} of {path} has a degenerate box "
                        f"{ann['bbox']} (width and height must be > 0); drop it.")
      m = coco.annToMask(ann).astype(bool)
      if m.shape != (h, w):
        raise UserError(f"COCO annotation {ann['id']} of {path}: mask {m.shape} does "
                        f"not match the image ({h}, {w}).")
      if not m.any():
        raise UserError(f"COCO annotation {ann['id']} of {path} has an empty mask; drop it.")
      semantic[m] = to_class[ann["category_id"]]
      masks.append(m)
      boxes.append((x, y, x + bw, y + bh))
      classes.append(to_class[ann["category_id"]])
    records.append(dict(
        image=image, semantic_mask=semantic,
        instance_masks=np.array(masks, bool).reshape(-1, h, w),
        boxes=np.array(boxes, np.float32).reshape(-1, 4),
        classes=np.array(classes, np.int32), id=image_id, split=split,
        index=image_id - 1))
  return records


__all__ = ["BACKGROUNDS", "CLASS_NAMES", "SPLITS", "as_arrays", "generate", "generate_one",
           "load_coco", "write_coco"]
