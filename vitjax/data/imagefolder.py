"""Indexing of an ImageFolder tree: `root/<split>/<class>/<file>`.

* Classes are the sorted names of the subfolders of the *train* split; the
  eval split must have the same set of class folders.
* Files are found recursively below each class folder, in sorted order.
  Hidden files and folders (name starting with '.', e.g. `.DS_Store`) are
  ignored; so are files directly in `root/<split>/`.
* Supported formats: JPEG, PNG, GIF (first frame), BMP - recognized by their
  content (magic bytes), not their extension.

Broken files are found while indexing, cheaply: every file's first and last
bytes are read; a file whose header is not an image is broken, and a file whose
ending does not look like the end of an image (truncated, or trailing data) is
decoded once to decide. A file with a plausible header and ending can still be
corrupt inside; the input pipeline catches those when decoding (see
`input_pipeline`). With `corrupt_images='skip'` broken files are left out and
counted, with one warning per split; with 'error' the first one raises a
`UserError` naming it.

The index of a split is cached per process (key: root, split, policy), so the
tree is scanned and the warning logged once even though `get_dataset_info`,
`train_iterator` and `eval_iterator` each ask for it.
"""

import concurrent.futures
import dataclasses
import functools
import logging
import os

import numpy as np
import tensorflow as tf

from vitjax.errors import UserError

CORRUPT_POLICIES = ('skip', 'error')
_MAGIC = (
    (b'\xff\xd8\xff', 'jpeg'),
    (b'\x89PNG\r\n\x1a\n', 'png'),
    (b'GIF87a', 'gif'),
    (b'GIF89a', 'gif'),
    (b'BM', 'bmp'),
)
_PEEK = 32  # Bytes read at each end of a file.

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SplitIndex:
  """The usable images of one split, in a fixed (sorted) order."""
  paths: tuple[str, ...]
  labels: np.ndarray  # int32, aligned with paths.
  class_names: tuple[str, ...]
  skipped: tuple[tuple[str, str], ...]  # (path, reason) of left-out files.


def fix_hint(path: str) -> str:
  return (f'Remove or replace {path}, or set '
          f"config.dataset.corrupt_images='skip' to leave such files out.")


def decode_error(path: str) -> str | None:
  """Why `path` cannot be decoded like the pipeline does, or None if it can."""
  try:
    tf.io.decode_image(tf.io.read_file(path), channels=3,
                       expand_animations=False)
  except (tf.errors.OpError, ValueError) as e:
    first_line = str(e).strip().splitlines()[-1] if str(e).strip() else ''
    return f'cannot be decoded ({type(e).__name__}: {first_line[:200]})'
  return None


def name_undecodable_file(paths, error) -> UserError:
  """The UserError naming the first of `paths` (in stream order) that breaks decoding."""
  for path in map(os.fsdecode, paths):
    why = decode_error(path)
    if why is not None:
      return UserError(f'ImageFolder file {path} {why}. {fix_hint(path)}')
  return UserError(f'Reading the ImageFolder data failed: {error}')


def _ending_looks_complete(kind: str, head: bytes, tail: bytes,
                           size: int) -> bool:
  if kind == 'jpeg':
    return tail.endswith(b'\xff\xd9')
  if kind == 'png':
    return b'IEND' in tail[-12:]
  if kind == 'gif':
    return tail.endswith(b';')
  # BMP: the header stores the file size.
  return len(head) >= 6 and size >= int.from_bytes(head[2:6], 'little')


def check_file(path: str) -> str | None:
  """Why `path` is not a usable image, or None if it looks fine."""
  try:
    with open(path, 'rb') as f:
      head = f.read(_PEEK)
      size = f.seek(0, os.SEEK_END)
      f.seek(max(0, size - _PEEK))
      tail = f.read()
  except OSError as e:
    return f'cannot be read ({e.strerror})'
  kind = next((k for magic, k in _MAGIC if head.startswith(magic)), None)
  if kind is None:
    return 'is not a JPEG, PNG, GIF or BMP image'
  if _ending_looks_complete(kind, head, tail, size):
    return None
  return decode_error(path)  # Truncated, or just trailing bytes? Decode.


def _visible_sorted(names):
  return sorted(n for n in names if not n.startswith('.'))


def _list_class_files(class_dir: str) -> list[str]:
  files = []
  for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
    dirnames[:] = _visible_sorted(dirnames)  # Walk in sorted order.
    files.extend(os.path.join(dirpath, f) for f in _visible_sorted(filenames))
  return files


def class_folders(root: str, split: str) -> tuple[str, ...]:
  """Sorted class folder names of `root/split`; UserError if none."""
  split_dir = os.path.join(root, split)
  if not os.path.isdir(root):
    raise UserError(
        f"ImageFolder root {root!r} does not exist or is not a folder. Set "
        f'config.dataset.data_dir to a folder that contains one subfolder per '
        f'split (e.g. train/ and val/), each with one subfolder per class.')
  if not os.path.isdir(split_dir):
    available = _visible_sorted(
        n for n in os.listdir(root) if os.path.isdir(os.path.join(root, n)))
    raise UserError(
        f'ImageFolder split folder {split_dir!r} does not exist (subfolders '
        f'of {root!r}: {available}). Set config.dataset.train_split / '
        f'eval_split to one of them, or create it.')
  classes = tuple(
      n for n in _visible_sorted(os.listdir(split_dir))
      if os.path.isdir(os.path.join(split_dir, n)))
  if not classes:
    raise UserError(
        f'ImageFolder split folder {split_dir!r} has no class subfolders. '
        f'Expected {split_dir}/<class name>/<image file>.')
  return classes


@functools.lru_cache(maxsize=None)
def index_split(root: str, split: str, class_names: tuple[str, ...],
                corrupt_images: str) -> SplitIndex:
  """Lists and checks the images of `root/split`, labelled by `class_names`."""
  split_dir = os.path.join(root, split)
  found = class_folders(root, split)
  if set(found) != set(class_names):
    raise UserError(
        f'ImageFolder split {split_dir!r} has class folders that differ from '
        f'the train split: missing {sorted(set(class_names) - set(found))}, '
        f'unexpected {sorted(set(found) - set(class_names))}. Every split '
        f'needs the same class subfolders (an empty folder is allowed).')
  paths, labels = [], []
  for label, name in enumerate(class_names):
    files = _list_class_files(os.path.join(split_dir, name))
    paths.extend(files)
    labels.extend([label] * len(files))

  workers = min(32, 4 * (os.cpu_count() or 1))
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    problems = list(pool.map(check_file, paths))

  bad = [(p, why) for p, why in zip(paths, problems) if why is not None]
  if bad and corrupt_images == 'error':
    path, why = bad[0]
    raise UserError(
        f'ImageFolder file {path} {why}. {fix_hint(path)}'
        + (f' ({len(bad) - 1} more such file(s) in {split_dir}.)'
           if len(bad) > 1 else ''))
  keep = [i for i, why in enumerate(problems) if why is None]
  if not keep:
    raise UserError(
        f'ImageFolder split {split_dir!r} contains no usable images '
        f'({len(paths)} file(s) found, {len(bad)} of them broken). Put JPEG, '
        f'PNG, GIF or BMP files in {split_dir}/<class name>/.')
  if bad:
    _log.warning(
        'ImageFolder split %s: skipped %d file(s) that are not usable images '
        '(first: %s %s). Set config.dataset.corrupt_images=\'error\' to stop '
        'on them instead.', split_dir, len(bad), bad[0][0], bad[0][1])
  kept_labels = np.asarray([labels[i] for i in keep], np.int32)
  kept_labels.flags.writeable = False  # Cached: shared between callers.
  return SplitIndex(
      paths=tuple(paths[i] for i in keep),
      labels=kept_labels,
      class_names=class_names,
      skipped=tuple(bad))
