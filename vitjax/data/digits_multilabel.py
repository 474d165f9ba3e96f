"""The embedded multi-label set 'digits_multilabel': 2x2 mosaics of UCI digits.

Each example is a 16x16 grayscale canvas of four 8x8 cells. 1 to 4 cells
(uniformly many, at uniformly chosen cells) hold a digit drawn from the
matching split of the 'digits' set (vitjax.data.digits: 'train' mosaics use
only digits-train images, 'test' mosaics only digits-test images, so no
digit image is in both); the other cells are black. The label is the set of
digit classes present, as a multi-hot vector of 10 (a digit twice counts
once).

Deterministic: example i of a split is a function of (SEED, split) only,
    rng = numpy.random.RandomState(SEED + {'train': 0, 'test': 1}[split])
drawn in order for i = 0..n-1 (count, cells, digit indices).
Sizes: 'train' 4,000, 'test' 1,000.
"""

import functools

import numpy as np

from vitjax.data import digits
from vitjax.errors import UserError

SPLITS = ('train', 'test')
NUM_EXAMPLES = {'train': 4000, 'test': 1000}
CLASS_NAMES = digits.CLASS_NAMES
SEED = 1234
CELL = 8


def _check_split(split: str) -> None:
  if split not in SPLITS:
    raise UserError(
        f"The 'digits_multilabel' dataset has no split {split!r}: it has only "
        f"'train' (4,000 examples) and 'test' (1,000). Set "
        f"config.dataset.train_split='train' and config.dataset.eval_split='test'.")


def layout(split: str) -> list[list[tuple[int, int]]]:
  """Per example, the (cell 0..3, index into digits.load_split(split)) pairs."""
  _check_split(split)
  rng = np.random.RandomState(SEED + SPLITS.index(split))
  pool = digits.NUM_EXAMPLES[split]
  out = []
  for _ in range(NUM_EXAMPLES[split]):
    count = rng.randint(1, 5)
    cells = rng.choice(4, size=count, replace=False)
    picks = rng.randint(0, pool, size=count)
    out.append([(int(c), int(p)) for c, p in zip(cells, picks)])
  return out


@functools.lru_cache(maxsize=None)
def load_split(split: str) -> tuple[np.ndarray, np.ndarray]:
  """(images float32 [n, 16, 16, 1] in [0, 1], multi-hot labels int32 [n, 10])."""
  source_images, source_labels = digits.load_split(split)
  examples = layout(split)
  images = np.zeros((len(examples), 2 * CELL, 2 * CELL, 1), np.float32)
  labels = np.zeros((len(examples), len(CLASS_NAMES)), np.int32)
  for i, placed in enumerate(examples):
    for cell, pick in placed:
      y, x = divmod(cell, 2)
      images[i, y * CELL:(y + 1) * CELL, x * CELL:(x + 1) * CELL] = source_images[pick]
      labels[i, source_labels[pick]] = 1
  images.flags.writeable = False
  labels.flags.writeable = False
  return images, labels
