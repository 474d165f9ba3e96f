"""Token-labeling score maps stored on disk (LV-ViT's offline "label maps").

A machine annotator (any trained vitjax model) scores every patch position of
every *whole* training image once; the top-k classes per position are kept:

  <dir>/values.npy   float16/32 [N, h, w, k]  the annotator's logits of the top k
  <dir>/indices.npy  int32      [N, h, w, k]  their class indices
  <dir>/meta.json    num_classes, num_examples, grid, topk, dataset, split, teacher

Row i belongs to example i of the train split in the source's order (digits:
`vitjax.data.digits.load_split`; imagefolder: sorted files). Written by
`python -m vitjax.tools.label_maps`; the arrays are memory-mapped, so a
ImageNet-sized file (1.28M x 14 x 14 x 5 in float16: 2.5 GB of values) is
read row by row.

In training, each example's map must follow its augmentation: the input
pipeline reports the crop box (relative to the whole image) and the flip
(`config.input.return_geometry`), and `crop_score_map` cuts the box out of
the dense map and averages it onto the student's token grid (each output cell
the area-weighted mean of the map cells it overlaps, the map taken as
constant over each cell and extended at the border for the zero padding of a
random crop), then flips it. A full-image box on the map's own grid is the
identity; on a grid that divides it, mean pooling (as the on-the-fly teacher
path pools its logits).
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from vitjax.errors import UserError


class LabelMaps:
  """Memory-mapped label maps; `lookup(indices)` gathers the rows of a batch."""

  def __init__(self, directory: str):
    meta_path = os.path.join(directory, "meta.json")
    if not os.path.isfile(meta_path):
      raise UserError(f"token_labeling: {meta_path} not found; write label maps with "
                      "`python -m vitjax.tools.label_maps --teacher=<workdir> "
                      f"--out={directory}`.")
    with open(meta_path) as f:
      self.meta = json.load(f)
    self.values = np.load(os.path.join(directory, "values.npy"), mmap_mode="r")
    self.indices = np.load(os.path.join(directory, "indices.npy"), mmap_mode="r")
    n = self.meta["num_examples"]
    if self.values.shape[0] != n or self.indices.shape != self.values.shape:
      raise UserError(f"token_labeling: label maps in {directory} are inconsistent "
                      f"(values {self.values.shape}, indices {self.indices.shape}, "
                      f"meta num_examples {n}); write them again.")

  def check(self, num_classes: int, num_train_examples: int):
    m = self.meta
    if m["num_classes"] != num_classes or m["num_examples"] != num_train_examples:
      raise UserError(
          f"token_labeling: the label maps were written for {m['num_examples']} train "
          f"examples of {m['num_classes']} classes ({m.get('dataset')}:{m.get('split')}); "
          f"this run's train split has {num_train_examples} examples of {num_classes} "
          "classes. Write label maps for this dataset.")

  def lookup(self, indices) -> dict:
    idx = np.asarray(indices)
    return {"label_map_values": np.asarray(self.values[idx], np.float32),
            "label_map_indices": np.asarray(self.indices[idx], np.int32)}


def dense_from_topk(values, indices, num_classes: int, temperature: float = 1.0):
  """Top-k logits [B, h, w, k] + class indices -> probabilities [B, h, w, K]
  (softmax over the k kept classes, zero elsewhere: what softmax over all
  classes renormalised to its top k gives)."""
  probs = jax.nn.softmax(values.astype(jnp.float32) / temperature, axis=-1)
  return jnp.einsum("bhwk,bhwkc->bhwc", probs, jax.nn.one_hot(indices, num_classes))


def _cell_weights(lo, hi, size: int, cells: int):
  """[B, cells, size]: the share of each map cell in each output cell.

  Output cell i spans [lo + (hi - lo) i / cells, lo + (hi - lo)(i + 1) / cells]
  (relative to the whole image); map cell j spans [j, j + 1] / size, the first
  and last extended to -inf / +inf (a box reaching into the padding takes
  the border cell)."""
  t = jnp.arange(cells + 1, dtype=jnp.float32) / cells
  edges = (lo[:, None] + (hi - lo)[:, None] * t) * size  # [B, cells + 1] in map units
  a, b = edges[:, :-1, None], edges[:, 1:, None]
  j = jnp.arange(size, dtype=jnp.float32)
  left = jnp.where(j == 0, -jnp.inf, j)
  right = jnp.where(j == size - 1, jnp.inf, j + 1)
  overlap = jnp.clip(jnp.minimum(b, right) - jnp.maximum(a, left), 0.0, None)
  return overlap / jnp.sum(overlap, axis=-1, keepdims=True)


def crop_score_map(maps, crop_box, flipped, grid):
  """maps [B, h, w, K] of the whole images -> [B, gh, gw, K] for the crops.

  crop_box [B, 4] = (y0, x0, y1, x1) relative to the whole image, flipped [B]
  (the crop was flipped left-right after resizing), grid = (gh, gw).
  """
  _, h, w, _ = maps.shape
  gh, gw = grid
  box = crop_box.astype(jnp.float32)
  wy = _cell_weights(box[:, 0], box[:, 2], h, gh)
  wx = _cell_weights(box[:, 1], box[:, 3], w, gw)
  out = jnp.einsum("bih,bhwc,bjw->bijc", wy, maps.astype(jnp.float32), wx)
  return jnp.where(flipped[:, None, None, None], out[:, :, ::-1], out)
