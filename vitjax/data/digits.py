"""The embedded 'digits' dataset: no download, no network.

The source is `sklearn.datasets.load_digits()`: 1,797 real 8x8 grayscale
images of handwritten digits, pixel values 0..16, 10 classes ('0'..'9').

The split is fixed and documented here, so results are comparable between
runs and machines:

    order = numpy.random.RandomState(0).permutation(1797)
    'train' = order[:1437]   (1,437 examples)
    'test'  = order[1437:]   (360 examples)

Images are returned scaled to [0, 1] (divided by 16), shape [8, 8, 1]; the
shared preprocessing repeats them to 3 channels and resizes them.
"""

import functools

import numpy as np

from vitjax.errors import UserError

SPLITS = ('train', 'test')
NUM_EXAMPLES = {'train': 1437, 'test': 360}
CLASS_NAMES = tuple(str(i) for i in range(10))
_TOTAL = 1797


def _check_split(split: str) -> None:
  if split not in SPLITS:
    raise UserError(
        f"The 'digits' dataset has no split {split!r}: it has only 'train' "
        f"(1,437 examples) and 'test' (360). Set config.dataset.train_split="
        f"'train' and config.dataset.eval_split='test'.")


def split_indices(split: str) -> np.ndarray:
  """Indices into `load_digits()` of the examples of `split`."""
  _check_split(split)
  order = np.random.RandomState(0).permutation(_TOTAL)
  return order[:NUM_EXAMPLES['train']] if split == 'train' else order[
      NUM_EXAMPLES['train']:]


@functools.lru_cache(maxsize=None)
def load_split(split: str) -> tuple[np.ndarray, np.ndarray]:
  """Returns (images float32 [n, 8, 8, 1] in [0, 1], labels int32 [n])."""
  _check_split(split)
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  digits = datasets.load_digits()
  index = split_indices(split)
  images = (digits.images[index] / 16.0).astype(np.float32)[..., None]
  labels = digits.target[index].astype(np.int32)
  images.flags.writeable = False  # Cached: shared between callers.
  labels.flags.writeable = False
  return images, labels
