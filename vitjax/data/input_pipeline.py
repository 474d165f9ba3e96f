"""Input pipeline: deterministic, resumable, multi-process tf.data streams.

Public API (used by the trainer):

    info = get_dataset_info(config)
    for batch in train_iterator(config, start_step=s, process_index=i,
                                process_count=P): ...   # infinite
    for batch in eval_iterator(config, process_index=i, process_count=P): ...
    steps_per_epoch(config, info)

Sources ('digits', 'imagefolder', or any TFDS name) only decide *which*
elements come in *which order*; they all hand over (encoded-or-raw image,
label) and share the same decode / preprocess / batch code (`preprocess`).

Train order, a pure function of (config.seed, global step):

* epoch e = step // steps_per_epoch, with steps_per_epoch = number of train
  examples // global batch size; the remainder is dropped at the end of each
  epoch, so step s is always batch (s mod steps_per_epoch) of epoch e.
* digits / imagefolder (random access): epoch e reads the examples in the
  order of a numpy permutation seeded by (seed, e). Resuming inside an epoch
  slices the index list, so skipped examples are never read.
* TFDS (sequential tfrecord reading): epoch e reads the split with its files
  shuffled by TFDS (`ReadConfig.shuffle_seed` = f(seed, e)), then a seeded
  shuffle buffer (config.dataset.shuffle_buffer, seed f(seed, e)), then
  `skip` to the resume position; images are still encoded while skipped.
* Process i of P takes rows [i*L, (i+1)*L) of every global batch of that
  order (L = config.batch_size // P), so the local batches of step k, stacked
  in process order, are exactly the single-process batch of step k, row for
  row. With TFDS every process reads the whole
  stream (and keeps 1/P of it); that costs reading, not decoding.
* Augmentation is stateless; the seed of an example is derived from
  (seed, epoch, position in the epoch) - not from the process.

Note: the per-example order of a TFDS epoch also depends on how the data set
was prepared (its file sharding); it is fixed for a given prepared copy.

Eval: the eval split in its stored order, process i takes positions i, i+P,
...; every process yields ceil(ceil(N / P) / local_eval_batch) batches of the
same shape, the missing rows padded with mask=False.

ImageFolder files that look fine when indexed but fail to decode are, with
corrupt_images='skip', dropped by `ignore_errors` (TF logs each one). The
epoch is then topped up with its first examples so the step count stays
exact, but the batches of that epoch after the broken file shift by one
example (in eval: one fewer mask=True row, and a warning). With 'error' the
file is named in a UserError.
"""

import concurrent.futures
import dataclasses
import itertools
import logging
import math
import os
from collections.abc import Iterator
from typing import Any, Callable

import numpy as np
import tensorflow as tf

from vitjax.data import augment as augment_lib
from vitjax.data import digits
from vitjax.data import digits_multilabel
from vitjax.data import imagefolder
from vitjax.data import preprocess
from vitjax.errors import UserError

_log = logging.getLogger(__name__)


def _hide_accelerators_from_tf() -> None:
  """TF only feeds the host; the accelerators belong to JAX."""
  try:
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError:  # TF devices already initialized elsewhere.
    pass


_hide_accelerators_from_tf()


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  num_classes: int
  num_train_examples: int
  num_eval_examples: int
  class_names: tuple[str, ...]
  image_channels: int = 3  # Always 3 after preprocessing.
  # True: `label` is a multi-hot int32 [num_classes] (several classes per image).
  multi_label: bool = False


# ----------------------------------------------------------------------------
# Config checks.


def _preprocessing(config) -> preprocess.Preprocessing:
  """Validated `config.input`."""
  inp = config.input
  size = inp.image_size
  if not isinstance(size, int) or size <= 0:
    raise UserError(f'config.input.image_size must be a positive integer, '
                    f'got {size!r}.')
  if inp.train_augment not in preprocess.TRAIN_AUGMENTS:
    raise UserError(f'config.input.train_augment={inp.train_augment!r} is '
                    f'not one of {preprocess.TRAIN_AUGMENTS}.')
  crop_scale = tuple(float(x) for x in inp.crop_scale)
  if len(crop_scale) != 2 or not 0 < crop_scale[0] <= crop_scale[1] <= 1:
    raise UserError(f'config.input.crop_scale must be (min, max) with '
                    f'0 < min <= max <= 1, got {inp.crop_scale!r}.')
  if not isinstance(inp.crop_padding, int) or inp.crop_padding < 0:
    raise UserError(f'config.input.crop_padding must be an integer >= 0, got '
                    f'{inp.crop_padding!r}.')
  eval_resize = inp.eval_resize
  if eval_resize is not None and (not isinstance(eval_resize, int) or
                                  eval_resize < size):
    raise UserError(
        f'config.input.eval_resize={eval_resize!r} must be None or an '
        f'integer >= config.input.image_size={size} (the shorter side is '
        f'resized to it, then a {size}x{size} center crop is taken).')
  mean, std = tuple(inp.mean), tuple(inp.std)
  if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
    raise UserError(f'config.input.mean and config.input.std must each have 3 '
                    f'values (RGB) and std must be > 0; got mean={mean}, '
                    f'std={std}.')
  return preprocess.Preprocessing(
      image_size=size, train_augment=inp.train_augment, crop_scale=crop_scale,
      crop_padding=inp.crop_padding, flip=bool(inp.flip),
      eval_resize=eval_resize, mean=tuple(map(float, mean)),
      std=tuple(map(float, std)),
      augment=augment_lib.resolve(config.get('augment')))


def _local_batch(total: int, process_count: int, field: str) -> int:
  if not isinstance(total, int) or total <= 0:
    raise UserError(f'{field} must be a positive integer, got {total!r}.')
  if total % process_count:
    suggestion = max(1, total // process_count) * process_count
    raise UserError(
        f'{field}={total} is the global batch size and must be divisible by '
        f'the number of processes ({process_count}). Set it to a multiple of '
        f'{process_count}, e.g. {suggestion}.')
  return total // process_count


def _check_process(process_index: int, process_count: int) -> None:
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f'Need 0 <= process_index < process_count, got '
                     f'{process_index} and {process_count}.')


def _derive_seed(*keys: int) -> int:
  """A stable 63-bit seed from integers (negative ones allowed)."""
  words = np.random.SeedSequence([k % 2**64 for k in keys]).generate_state(
      2, np.uint32)
  return (int(words[0]) << 31) ^ int(words[1])


# ----------------------------------------------------------------------------
# Sources. A stream is a tf.data.Dataset of (position, (a, b)) for training or
# (a, b) for eval, with `source.load(a, b) -> (image, label)`.


def _owner(position, batch_size: int, process_count: int):
  """The process that reads epoch position `position`: global batch rows
  [i*L, (i+1)*L) go to process i, so the assembled global batch has the
  single-process row order (per-row randomness such as drop path then
  matches a single-process run exactly)."""
  return (position % batch_size) // (batch_size // process_count)


@dataclasses.dataclass
class _Source:
  """Base: what every source provides to the shared pipeline."""
  info: DatasetInfo
  # ImageFolder only: drop files that fail to decode ('skip'), or name the
  # file in a UserError ('error').
  corrupt_images: str | None = None

  def load(self, a, b):
    return a, b

  def train_stream(self, seed, epoch, epoch_len, start, process_index,
                   process_count, batch_size) -> tuple[tf.data.Dataset, Any]:
    raise NotImplementedError

  def eval_stream(self, process_index,
                  process_count) -> tuple[tf.data.Dataset, Any]:
    raise NotImplementedError


@dataclasses.dataclass
class _ArraySource(_Source):
  """Random-access source: the splits are aligned numpy arrays (a, b)."""
  train_data: tuple[np.ndarray, np.ndarray] = ()
  eval_data: tuple[np.ndarray, np.ndarray] = ()
  load_fn: Callable[..., Any] | None = None
  has_paths: bool = False  # `a` holds file paths (for error messages).

  def load(self, a, b):
    return self.load_fn(a, b) if self.load_fn else (a, b)

  def train_stream(self, seed, epoch, epoch_len, start, process_index,
                   process_count, batch_size, with_index=False):
    n = len(self.train_data[1])
    order = np.random.RandomState(_derive_seed(seed, epoch) % 2**32)
    order = order.permutation(n)[:epoch_len]
    positions = np.arange(start, epoch_len)
    positions = positions[_owner(positions, batch_size, process_count) == process_index]
    a, b = (x[order[positions]] for x in self.train_data)
    raw = (order[positions], (a, b)) if with_index else (a, b)
    ds = tf.data.Dataset.from_tensor_slices((positions, raw))
    return ds, (a if self.has_paths else None)

  def eval_stream(self, process_index, process_count):
    a, b = (x[process_index::process_count] for x in self.eval_data)
    return (tf.data.Dataset.from_tensor_slices((a, b)),
            a if self.has_paths else None)


def _digits_source(config) -> _Source:
  train = digits.load_split(config.dataset.train_split)
  eval_ = digits.load_split(config.dataset.eval_split)
  info = DatasetInfo(
      num_classes=len(digits.CLASS_NAMES), num_train_examples=len(train[1]),
      num_eval_examples=len(eval_[1]), class_names=digits.CLASS_NAMES)
  return _ArraySource(info=info, train_data=train, eval_data=eval_)


def _digits_multilabel_source(config) -> _Source:
  train = digits_multilabel.load_split(config.dataset.train_split)
  eval_ = digits_multilabel.load_split(config.dataset.eval_split)
  info = DatasetInfo(
      num_classes=len(digits_multilabel.CLASS_NAMES),
      num_train_examples=len(train[1]), num_eval_examples=len(eval_[1]),
      class_names=digits_multilabel.CLASS_NAMES, multi_label=True)
  return _ArraySource(info=info, train_data=train, eval_data=eval_)


def _path_array(paths) -> np.ndarray:
  # Bytes objects: a fixed-width numpy str array would take 4 bytes per char.
  return np.array([os.fsencode(p) for p in paths], dtype=object)


def _read_file(path, label):
  return tf.io.read_file(path), label


def _imagefolder_source(config) -> _Source:
  root = config.dataset.get('data_dir')
  if not root:
    raise UserError("config.dataset.data_dir must be set to the ImageFolder "
                    "root (containing e.g. train/ and val/) when "
                    "config.dataset.name='imagefolder'.")
  policy = config.dataset.get('corrupt_images', 'skip')
  if policy not in imagefolder.CORRUPT_POLICIES:
    raise UserError(f'config.dataset.corrupt_images={policy!r} is not one of '
                    f'{imagefolder.CORRUPT_POLICIES}.')
  root = str(root)
  classes = imagefolder.class_folders(root, config.dataset.train_split)
  train = imagefolder.index_split(root, config.dataset.train_split, classes,
                                  policy)
  empty = [c for i, c in enumerate(classes) if not np.any(train.labels == i)]
  if empty:
    raise UserError(
        f'ImageFolder train split {root}/{config.dataset.train_split} has '
        f'class folder(s) without usable images: {empty}. Add images or '
        f'remove the folder(s).')
  eval_ = imagefolder.index_split(root, config.dataset.eval_split, classes,
                                  policy)
  info = DatasetInfo(
      num_classes=len(classes), num_train_examples=len(train.paths),
      num_eval_examples=len(eval_.paths), class_names=classes)
  return _ArraySource(
      info=info, corrupt_images=policy,
      train_data=(_path_array(train.paths), train.labels),
      eval_data=(_path_array(eval_.paths), eval_.labels),
      load_fn=_read_file, has_paths=True)


def _not_prepared(name, data_dir) -> UserError:
  where = data_dir or '~/tensorflow_datasets (the TFDS default)'
  shown = data_dir or '~/tensorflow_datasets'
  return UserError(
      f'TFDS dataset {name!r} is not prepared in data_dir={where}, and this '
      f'program never downloads. Fix: on a machine with network access run '
      f'`tfds build {name} --data_dir {shown}` and copy that folder here, or '
      f'point --config.dataset.data_dir at a prepared copy. (Some datasets, '
      f'e.g. imagenet2012, also need a manual download; see the TFDS '
      f'catalog.)')


class _TfdsSource(_Source):
  """A prepared TFDS dataset, read sequentially with SkipDecoding."""

  def __init__(self, config):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    self._tfds = tfds
    name = config.dataset.name
    data_dir = config.dataset.get('data_dir')
    try:
      builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.DatasetNotFoundError:
      raise UserError(
          f"config.dataset.name={name!r} is neither 'digits', 'imagefolder' "
          f'nor a TFDS dataset name (see '
          f'https://www.tensorflow.org/datasets/catalog).') from None
    except ValueError as e:  # E.g. an unknown config or version.
      raise UserError(f'config.dataset.name={name!r}: {e}') from None
    self._builder, self._name, self._data_dir = builder, name, data_dir
    features = builder.info.features
    keys = builder.info.supervised_keys
    if not (isinstance(keys, tuple) and len(keys) == 2 and
            all(isinstance(k, str) for k in keys)):
      keys = ('image', 'label')
      # Multi-label sets (e.g. voc/2007): a top-level Sequence(ClassLabel)
      # 'labels', or the 'label' of every entry of 'objects'.
      if 'label' not in features and 'labels' in features:
        keys = ('image', 'labels')
      elif 'label' not in features and 'objects' in features:
        keys = ('image', 'objects/label')
    self._image_key, self._label_key = keys
    label, multi_label = self._label_feature(features, self._label_key)
    if (self._image_key not in features or
        not isinstance(label, tfds.features.ClassLabel)):
      raise UserError(
          f'TFDS dataset {name!r} is not an image classification dataset: '
          f'expected an image feature {self._image_key!r} and a ClassLabel '
          f'(or a sequence of ClassLabel: multi-label) feature '
          f'{self._label_key!r}, got {list(features.keys())}.')
    image_feature = features[self._image_key]
    image_decoder = ({self._image_key: tfds.decode.SkipDecoding()} if
                     isinstance(image_feature, tfds.features.Image) else None)
    parts = self._label_key.split('/')
    label_decode = {parts[1]: True} if len(parts) == 2 else True
    self._decoders = tfds.decode.PartialDecoding(
        {self._image_key: True, parts[0]: label_decode}, decoders=image_decoder)
    self._multi_label = multi_label
    self._num_classes = label.num_classes
    self._train_split = config.dataset.train_split
    self._eval_split = config.dataset.eval_split
    self._shuffle_buffer = int(config.dataset.get('shuffle_buffer', 10_000))
    if self._shuffle_buffer < 1:
      raise UserError(f'config.dataset.shuffle_buffer must be >= 1, got '
                      f'{self._shuffle_buffer}.')
    names = tuple(label.names) if label.names else tuple(
        str(i) for i in range(label.num_classes))
    super().__init__(info=DatasetInfo(
        num_classes=label.num_classes,
        num_train_examples=self._split_size(self._train_split),
        num_eval_examples=self._split_size(self._eval_split),
        class_names=names, multi_label=multi_label))

  def _label_feature(self, features, key):
    """(the ClassLabel behind `key`, whether it is a sequence: multi-label)."""
    tfds = self._tfds
    parts = key.split('/')
    if parts[0] not in features:
      return None, False
    feature = features[parts[0]]
    if len(parts) == 2:
      if not isinstance(feature, tfds.features.Sequence):
        return None, False
      inner = feature.feature
      return (inner[parts[1]] if parts[1] in inner.keys() else None), True
    if isinstance(feature, tfds.features.Sequence):
      return feature.feature, True
    return feature, False

  def _label(self, ex):
    """The class index, or the multi-hot int32 [num_classes] of a sequence."""
    parts = self._label_key.split('/')
    label = ex[parts[0]] if len(parts) == 1 else ex[parts[0]][parts[1]]
    if not self._multi_label:
      return label
    hot = tf.one_hot(label, self._num_classes, dtype=tf.int32)
    return tf.minimum(tf.reduce_sum(hot, axis=0), 1)

  def _split_size(self, split: str) -> int:
    splits = self._builder.info.splits
    if splits:  # Prepared: the metadata knows every split.
      try:
        n = splits[split].num_examples
      except (KeyError, ValueError) as e:
        raise UserError(
            f'TFDS dataset {self._name!r} has no split {split!r} ({e}). '
            f'Available splits: {sorted(splits.keys())}; slices such as '
            f"'train[:90%]' or 'train[10%:]' are supported.") from None
    else:  # No metadata: not prepared (or a test mock that yields data).
      try:
        ds = self._builder.as_dataset(split=split)
      except Exception:  # pylint: disable=broad-except
        raise _not_prepared(self._name, self._data_dir) from None
      n = int(ds.cardinality())
      if n < 0:
        n = int(ds.reduce(0, lambda count, _: count + 1))
    if n == 0:
      raise UserError(f'TFDS split {self._name}:{split} is empty.')
    return n

  def _read(self, split, shuffle_seed=None) -> tf.data.Dataset:
    read_config = self._tfds.ReadConfig(
        shuffle_seed=shuffle_seed, try_autocache=False)
    ds = self._builder.as_dataset(
        split=split, shuffle_files=shuffle_seed is not None,
        decoders=self._decoders, read_config=read_config)
    return ds.map(lambda ex: (ex[self._image_key], self._label(ex)))

  def train_stream(self, seed, epoch, epoch_len, start, process_index,
                   process_count, batch_size):
    epoch_seed = _derive_seed(seed, epoch)
    ds = self._read(self._train_split, shuffle_seed=epoch_seed)
    ds = ds.shuffle(self._shuffle_buffer, seed=epoch_seed,
                    reshuffle_each_iteration=False)
    ds = ds.take(epoch_len).enumerate().skip(start)
    return ds.filter(lambda pos, _: _owner(pos, batch_size, process_count)
                     == process_index), None

  def eval_stream(self, process_index, process_count):
    ds = self._read(self._eval_split)
    return ds.shard(process_count, process_index), None


def _make_source(config) -> _Source:
  name = config.dataset.name
  if name == 'digits':
    return _digits_source(config)
  if name == 'digits_multilabel':
    return _digits_multilabel_source(config)
  if name == 'imagefolder':
    return _imagefolder_source(config)
  return _TfdsSource(config)


# ----------------------------------------------------------------------------
# Shared pipeline.


def _finish(ds: tf.data.Dataset) -> tf.data.Dataset:
  options = tf.data.Options()
  options.deterministic = True
  options.threading.max_intra_op_parallelism = 1
  return ds.prefetch(tf.data.AUTOTUNE).with_options(options)


def _name_undecodable_file(paths, error) -> UserError:
  """Finds which of `paths` (in stream order) broke decoding."""
  for path in map(os.fsdecode, paths):
    why = imagefolder.decode_error(path)
    if why is not None:
      return UserError(f'ImageFolder file {path} {why}. '
                       f'{imagefolder.fix_hint(path)}')
  return UserError(f'Reading the ImageFolder data failed: {error}')


def _numpy_batches(ds, source: _Source, paths, local_batch: int,
                   expected_examples: int | None = None) -> Iterator[dict]:
  """Iterates `ds` as numpy; names the broken file in 'error' mode."""
  iterator = ds.as_numpy_iterator()
  done = seen = 0
  while True:
    try:
      batch = next(iterator)
    except StopIteration:
      break
    except tf.errors.OpError as e:
      if source.corrupt_images == 'error' and paths is not None:
        raise _name_undecodable_file(paths[done * local_batch:], e) from e
      raise
    done += 1
    if expected_examples is not None:
      seen += int(batch['mask'].sum())
    yield batch
  if expected_examples is not None and seen < expected_examples:
    _log.warning(
        'Eval: %d of the %d examples of this process could not be decoded '
        'and were left out (mask=False).', expected_examples - seen,
        expected_examples)


def get_dataset_info(config) -> DatasetInfo:
  return _make_source(config).info


def steps_per_epoch(config, info: DatasetInfo) -> int:
  steps = info.num_train_examples // config.batch_size
  if steps == 0:
    raise UserError(
        f'config.batch_size={config.batch_size} is larger than the '
        f'{info.num_train_examples} train examples of '
        f'{config.dataset.name!r}; use a batch size of at most '
        f'{info.num_train_examples}.')
  return steps


def train_iterator(config, *, start_step: int = 0, process_index: int = 0,
                   process_count: int = 1) -> Iterator[dict]:
  """Infinite train batches from `start_step` on (see module docstring).

  Yields dict(image=float32 [local_batch, S, S, 3], label=int32 [local_batch])
  with local_batch = config.batch_size // process_count (with
  config.input.return_geometry also index=int32 [local_batch], crop_box=float32
  [local_batch, 4], flipped=bool [local_batch]). Configuration and
  data errors raise here, not at the first `next`.
  """
  _check_process(process_index, process_count)
  if start_step < 0:
    raise ValueError(f'start_step must be >= 0, got {start_step}.')
  local_batch = _local_batch(config.batch_size, process_count,
                             'config.batch_size')
  prep = _preprocessing(config)
  source = _make_source(config)
  spe = steps_per_epoch(config, source.info)
  geometry = bool(config.input.get('return_geometry', False))
  if geometry and not isinstance(source, _ArraySource):
    raise UserError(
        'config.input.return_geometry=True (per-example index, crop box and '
        'flip in the train batches) needs a random-access source (digits, '
        f'imagefolder); {config.dataset.name!r} is read sequentially from '
        'TFDS, whose examples carry no stable index here.')
  return _train_batches(source, prep, config.seed, config.batch_size,
                        local_batch, spe, start_step, process_index,
                        process_count, geometry)


# Each epoch is its own tf.data pipeline (building one costs ~0.1-0.3 s of
# CPU: tracing + iterator setup). The next one is built, and its first batch
# produced, in a background thread this many steps before the current epoch
# ends, so epoch boundaries do not stall small data sets.
_LOOKAHEAD_STEPS = 4


def _epoch_batches(source, prep, seed, epoch, epoch_len, start, local_batch,
                   process_index, process_count, geometry=False) -> Iterator[dict]:
  """The batches of one epoch, from global position `start` on."""
  ds, paths = source.train_stream(seed, epoch, epoch_len, start,
                                  process_index, process_count,
                                  local_batch * process_count,
                                  **({'with_index': True} if geometry else {}))
  epoch_seed = tf.constant([_derive_seed(seed, epoch, 1), 0], tf.int64)

  def example(pos, raw):
    if geometry:
      index, raw = raw
    image, label = source.load(*raw)
    example_seed = tf.random.experimental.stateless_fold_in(epoch_seed, pos)
    if not geometry:
      return dict(image=preprocess.train_image(image, example_seed, prep),
                  label=tf.cast(label, tf.int32))
    image, box, flipped = preprocess.train_image(image, example_seed, prep,
                                                 with_geometry=True)
    return dict(image=image, label=tf.cast(label, tf.int32),
                index=tf.cast(index, tf.int32), crop_box=box, flipped=flipped)

  ds = ds.map(example, num_parallel_calls=tf.data.AUTOTUNE)
  if source.corrupt_images == 'skip':
    # Drop undecodable files, top the epoch up with its first examples.
    ds = ds.ignore_errors(log_warning=True).repeat()
    ds = ds.take((epoch_len - start) // process_count)
  ds = _finish(ds.batch(local_batch, drop_remainder=True))
  yield from _numpy_batches(ds, source, paths, local_batch)


def _started(batches: Iterator[dict]) -> Iterator[dict]:
  """Runs `batches` up to its first batch (builds the pipeline)."""
  first = next(batches, None)
  return iter(()) if first is None else itertools.chain([first], batches)


def _train_batches(source, prep, seed, batch_size, local_batch, spe,
                   start_step, process_index, process_count, geometry=False):
  first_epoch, first_step = divmod(start_step, spe)
  epoch_len = spe * batch_size

  def epoch_batches(epoch):
    start = first_step * batch_size if epoch == first_epoch else 0
    return _started(_epoch_batches(source, prep, seed, epoch, epoch_len, start,
                                   local_batch, process_index, process_count,
                                   geometry))

  with concurrent.futures.ThreadPoolExecutor(1) as pool:
    pending = pool.submit(epoch_batches, first_epoch)
    for epoch in itertools.count(first_epoch):
      batches, pending = pending.result(), None
      steps = spe - (first_step if epoch == first_epoch else 0)
      for i, batch in enumerate(batches):
        if pending is None and steps - i <= _LOOKAHEAD_STEPS:
          pending = pool.submit(epoch_batches, epoch + 1)
        yield batch
      if pending is None:
        pending = pool.submit(epoch_batches, epoch + 1)


def eval_iterator(config, *, process_index: int = 0,
                  process_count: int = 1) -> Iterator[dict]:
  """One pass over the eval split (see module docstring).

  Yields dict(image=float32 [b, S, S, 3], label=int32 [b], mask=bool [b]),
  b = config.eval_batch_size // process_count; every process yields the same
  number of batches and the mask=True rows of all processes together are the
  eval split, each example once.
  """
  _check_process(process_index, process_count)
  local_batch = _local_batch(config.eval_batch_size, process_count,
                             'config.eval_batch_size')
  prep = _preprocessing(config)
  source = _make_source(config)
  n = source.info.num_eval_examples
  num_batches = math.ceil(math.ceil(n / process_count) / local_batch)
  ds, paths = source.eval_stream(process_index, process_count)

  def example(raw):
    image, label = source.load(*raw)
    return dict(image=preprocess.eval_image(image, prep),
                label=tf.cast(label, tf.int32), mask=tf.constant(True))

  ds = ds.map(lambda *raw: example(raw), num_parallel_calls=tf.data.AUTOTUNE)
  if source.corrupt_images == 'skip':
    ds = ds.ignore_errors(log_warning=True)
  size = prep.image_size
  label_shape = [source.info.num_classes] if source.info.multi_label else []
  padding = tf.data.Dataset.from_tensors(dict(
      image=tf.zeros([size, size, 3], tf.float32),
      label=tf.zeros(label_shape, tf.int32), mask=tf.constant(False))).repeat()
  ds = ds.concatenate(padding).take(num_batches * local_batch)
  ds = _finish(ds.batch(local_batch))
  expected = len(range(process_index, n, process_count))
  return _numpy_batches(ds, source, paths, local_batch, expected)
