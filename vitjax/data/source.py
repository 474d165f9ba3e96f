"""The data-source contract and the one resumable, per-process iterator skeleton.

Every vitjax input pipeline (classification: `input_pipeline`, semantic /
panoptic segmentation: `dense`, detection: `detection`) is a *source* (which
examples, in which order) plus a per-example *map function* (decode,
augment, targets), joined by `train_batches` and `eval_batches` below. A new
data set is one new `Source`; a new kind of target is one new map function.

A source (subclass `Source`) provides
  info            a `DatasetInfo` (classes, split sizes).
  train_stream(seed, epoch, epoch_len, start, process_index, process_count,
               batch_size, with_index=False) -> (dataset, paths)
                  `dataset` yields (position, raw) for the positions
                  [start, epoch_len) of epoch `epoch`'s order that process
                  `process_index` owns (`owner`), in order; the order must be
                  a pure function of (seed, epoch) (and of P, for a source
                  that streams per-process files). `raw` is what `load`
                  takes (with_index=True: (example index, raw); random access
                  only, see `random_access`).
                  `paths` are the files behind those rows, or None.
  eval_stream(process_index, process_count) -> (dataset, paths)
                  the eval split in its stored order, positions i, i+P, ...
  load(*raw)      (image, target) tensors of one element (e.g. reads a file).
  corrupt_images  None, or for file sources 'skip' (undecodable files are
                  dropped and the epoch topped up) / 'error' (`explain` names
                  the file in a UserError).
Two sources implement it for any data: `ArraySource` (aligned numpy arrays,
random access: a seeded permutation per epoch, resuming slices it) and
`TfdsSource` (a prepared TFDS set; subclasses pick the features). How a
TFDS set is read depends on the format it was prepared in:
* ArrayRecord (`tfds build --file_format=array_record`): random access
  (`builder.as_data_source`), exactly as `ArraySource`: the epoch order is a
  seeded permutation of the split, each process reads only the records of
  its own rows (in eval: positions i, i+P, ...), a resume reads no record it
  skips. The records are parsed and decoded by the same TFDS feature code,
  the same `decoders`, as the streaming path, so an example becomes the same
  tensors either way; only the order differs.
* TFRecord: streamed front to back (files and a shuffle buffer seeded per
  epoch, resuming reads and drops the skipped records of the epoch). With P
  processes and a split stored in at least P files, process i streams only
  its part `tfds.even_splits(split, P, drop_remainder=True)[i]` (the files
  holding it; a file on a boundary between two parts is read by both, the
  second reading and dropping its head), shuffled on its own, and fills its
  rows [i*L, (i+1)*L) of every global batch from it: the global batch of a
  step is then well defined for a given P, but it is not the one-process
  batch. With fewer files than processes every process streams the whole
  split and keeps its rows (the one-process batches, as for random access).

What `train_batches` guarantees, for any source and map function:
* epoch e = step // steps_per_epoch; step s is batch (s mod steps_per_epoch)
  of epoch e (the remainder of an epoch is dropped), so the batches are a
  pure function of (seed, step) and starting at step k yields exactly the
  batches an uninterrupted run yields from step k;
* process i of P yields rows [i*L, (i+1)*L) of every global batch
  (L = batch_size // P): the local batches of a step, stacked in process
  order, are the single-process batch, row for row (except a TFRecord set
  streamed per process, above);
* the map function gets each example's stateless seed, derived from (seed,
  epoch, position in the epoch), never from the process.
`eval_batches` makes one pass; every process yields ceil(ceil(N / P) / L)
batches of the same shape, rows beyond the data being the caller's
`padding` example (with mask=False).
"""

import concurrent.futures
import dataclasses
import itertools
import logging
import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import tensorflow as tf

from vitjax.data import imagefolder
from vitjax.errors import UserError

_log = logging.getLogger(__name__)

# Each epoch is its own tf.data pipeline (building one costs ~0.1-0.3 s of
# CPU: tracing + iterator setup). The next one is built, and its first batch
# produced, in a background thread this many steps before the current epoch
# ends, so epoch boundaries do not stall small data sets.
LOOKAHEAD_STEPS = 4

# A random-access source reads its records in requests of at most this many
# (one `__getitems__` call each, several in flight).
READ_CHUNK = 64


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the trainer and tasks need to know about a data set."""
  num_classes: int
  num_train_examples: int
  num_eval_examples: int
  class_names: tuple[str, ...]
  image_channels: int = 3  # Always 3 after preprocessing.
  # True: `label` is a multi-hot int32 [num_classes] (several classes per image).
  multi_label: bool = False


# ----------------------------------------------------------------------------
# Checks and seeds.


def check_process(process_index: int, process_count: int) -> None:
  """Refuses an impossible (process_index, process_count)."""
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f'Need 0 <= process_index < process_count, got '
                     f'{process_index} and {process_count}.')


def local_batch_size(total: int, process_count: int, field: str) -> int:
  """The per-process share of the global batch `total` (named `field` in errors)."""
  if not isinstance(total, int) or total <= 0:
    raise UserError(f'{field} must be a positive integer, got {total!r}.')
  if total % process_count:
    suggestion = max(1, total // process_count) * process_count
    raise UserError(
        f'{field}={total} is the global batch size and must be divisible by '
        f'the number of processes ({process_count}). Set it to a multiple of '
        f'{process_count}, e.g. {suggestion}.')
  return total // process_count


def derive_seed(*keys: int) -> int:
  """A stable 63-bit seed from integers (negative ones allowed)."""
  words = np.random.SeedSequence([k % 2**64 for k in keys]).generate_state(
      2, np.uint32)
  return (int(words[0]) << 31) ^ int(words[1])


def owner(position, batch_size: int, process_count: int):
  """The process that reads epoch position `position`: global batch rows
  [i*L, (i+1)*L) go to process i, so the assembled global batch has the
  single-process row order (per-row randomness such as drop path then
  matches a single-process run exactly)."""
  return (position % batch_size) // (batch_size // process_count)


def epoch_rows(seed, epoch, n, epoch_len, start, process_index, process_count,
               batch_size) -> tuple[np.ndarray, np.ndarray]:
  """(positions, example indices) a random-access source reads in epoch `epoch`:
  the positions [start, epoch_len) this process owns, in a seeded
  permutation of the n examples (a pure function of (seed, epoch))."""
  order = np.random.RandomState(derive_seed(seed, epoch) % 2**32)
  order = order.permutation(n)[:epoch_len]
  positions = np.arange(start, epoch_len)
  positions = positions[owner(positions, batch_size, process_count) == process_index]
  return positions, order[positions]


def finish(ds: tf.data.Dataset) -> tf.data.Dataset:
  """Deterministic, prefetched: the last step of every pipeline."""
  options = tf.data.Options()
  options.deterministic = True
  options.threading.max_intra_op_parallelism = 1
  return ds.prefetch(tf.data.AUTOTUNE).with_options(options)


# ----------------------------------------------------------------------------
# Sources.


@dataclasses.dataclass
class Source:
  """Base: what every source provides to the shared iterators (see above)."""
  info: DatasetInfo
  # File sources only: drop files that fail to decode ('skip'), or name the
  # file in a UserError ('error').
  corrupt_images: str | None = None

  @property
  def random_access(self) -> bool:
    """Whether any example can be read alone (with_index works, resumes skip nothing)."""
    return False

  def load(self, a, b):
    return a, b

  def train_stream(self, seed, epoch, epoch_len, start, process_index,
                   process_count, batch_size,
                   with_index=False) -> tuple[tf.data.Dataset, Any]:
    raise NotImplementedError

  def eval_stream(self, process_index,
                  process_count) -> tuple[tf.data.Dataset, Any]:
    raise NotImplementedError

  def explain(self, error, paths) -> None:
    """Reading a batch failed with `error`; may raise a clearer error.

    `paths` are the files of the stream from the failed batch on (None for
    sources without files)."""
    del error, paths


@dataclasses.dataclass
class ArraySource(Source):
  """Random-access source: the splits are aligned numpy arrays (a, b)."""
  train_data: tuple[np.ndarray, np.ndarray] = ()
  eval_data: tuple[np.ndarray, np.ndarray] = ()
  load_fn: Callable[..., Any] | None = None
  has_paths: bool = False  # `a` holds image file paths (for error messages).

  @property
  def random_access(self) -> bool:
    return True

  def load(self, a, b):
    return self.load_fn(a, b) if self.load_fn else (a, b)

  def train_stream(self, seed, epoch, epoch_len, start, process_index,
                   process_count, batch_size, with_index=False):
    positions, index = epoch_rows(seed, epoch, len(self.train_data[1]),
                                  epoch_len, start, process_index,
                                  process_count, batch_size)
    a, b = (x[index] for x in self.train_data)
    raw = (index, (a, b)) if with_index else (a, b)
    ds = tf.data.Dataset.from_tensor_slices((positions, raw))
    return ds, (a if self.has_paths else None)

  def eval_stream(self, process_index, process_count):
    a, b = (x[process_index::process_count] for x in self.eval_data)
    return (tf.data.Dataset.from_tensor_slices((a, b)),
            a if self.has_paths else None)

  def explain(self, error, paths):
    if self.corrupt_images == 'error' and paths is not None:
      raise imagefolder.name_undecodable_file(paths, error) from error


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


class TfdsSource(Source):
  """A prepared TFDS dataset: random access if prepared as ArrayRecord, else streamed.

  A subclass opens the builder and sets `builder`, `name`, `data_dir`,
  `decoders`, `train_split`, `eval_split`, `shuffle_buffer`, implements
  `select(example) -> (a, b)` (the raw pair `load` takes) and then calls
  `Source.__init__(self, info=...)`. How each format is read: the module
  docstring.
  """
  builder: Any
  name: str
  data_dir: str | None
  decoders: Any
  train_split: str
  eval_split: str
  shuffle_buffer: int

  def select(self, example):
    raise NotImplementedError

  def split_size(self, split: str) -> int:
    """Examples in `split` (a UserError naming the splits if there is none)."""
    splits = self.builder.info.splits
    if splits:  # Prepared: the metadata knows every split.
      try:
        n = splits[split].num_examples
      except (KeyError, ValueError) as e:
        raise UserError(
            f'TFDS dataset {self.name!r} has no split {split!r} ({e}). '
            f'Available splits: {sorted(splits.keys())}; slices such as '
            f"'train[:90%]' or 'train[10%:]' are supported.") from None
    else:  # No metadata: not prepared (or a test mock that yields data).
      try:
        ds = self.builder.as_dataset(split=split)
      except Exception:  # pylint: disable=broad-except
        raise _not_prepared(self.name, self.data_dir) from None
      n = int(ds.cardinality())
      if n < 0:
        n = int(ds.reduce(0, lambda count, _: count + 1))
    if n == 0:
      raise UserError(f'TFDS split {self.name}:{split} is empty.')
    return n

  @property
  def random_access(self) -> bool:
    """True when the set is prepared as ArrayRecord (read by record index)."""
    info = self.builder.info
    formats = {info.file_format, *getattr(info, 'available_file_formats', set)()}
    return bool(info.splits) and 'array_record' in {
        getattr(f, 'value', f) for f in formats}

  def records(self, split):
    """The random-access reader of `split`: index -> serialized example (bytes)."""
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    readers = self.__dict__.setdefault('_readers', {})
    if split not in readers:
      readers[split] = self.builder.as_data_source(
          split=split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
    return readers[split]

  def _decode_fn(self):
    """serialized example -> features, decoded as `read` decodes them (same `decoders`)."""
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    features, decoders = self.builder.info.features, self.decoders
    if isinstance(decoders, tfds.decode.PartialDecoding):
      features = decoders.extract_features(features)
      decoders = decoders.decoders
    return lambda data: features.deserialize_example(data, decoders=decoders)

  def read_rows(self, split, positions, index, with_index=False) -> tf.data.Dataset:
    """(position, raw) for the records `index` of `split`, read by random access.

    Only these records are read, in requests of READ_CHUNK, in order."""
    reader, decode = self.records(split), self._decode_fn()

    def fetch(idx):
      return np.array(reader.__getitems__(idx.tolist()), dtype=object)

    def chunk(pos, idx):
      data = tf.numpy_function(fetch, [idx], tf.string)
      data.set_shape(idx.shape)
      return pos, idx, data

    def element(pos, idx, data):
      raw = self.select(decode(data))
      return pos, ((idx, raw) if with_index else raw)

    ds = tf.data.Dataset.from_tensor_slices(
        (np.asarray(positions, np.int64), np.asarray(index, np.int64)))
    ds = ds.batch(READ_CHUNK).map(chunk, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.unbatch().map(element, num_parallel_calls=tf.data.AUTOTUNE)

  def process_part(self, split, process_index, process_count):
    """The part of `split` this process streams alone, or None (every process
    streams the whole split): per-process parts need at least one file per process."""
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    splits = self.builder.info.splits
    if process_count == 1 or not splits:
      return None
    if len(splits[split].file_instructions) < process_count:
      return None
    return tfds.even_splits(split, n=process_count,
                            drop_remainder=True)[process_index]

  def read(self, split, shuffle_seed=None) -> tf.data.Dataset:
    """`split` as (a, b) pairs; files shuffled with `shuffle_seed` (None: in order)."""
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    read_config = tfds.ReadConfig(shuffle_seed=shuffle_seed, try_autocache=False)
    ds = self.builder.as_dataset(
        split=split, shuffle_files=shuffle_seed is not None,
        decoders=self.decoders, read_config=read_config)
    return ds.map(self.select)

  def train_stream(self, seed, epoch, epoch_len, start, process_index,
                   process_count, batch_size, with_index=False):
    if self.random_access:
      rows = epoch_rows(seed, epoch, len(self.records(self.train_split)),
                        epoch_len, start, process_index, process_count,
                        batch_size)
      return self.read_rows(self.train_split, *rows, with_index=with_index), None
    if with_index:
      raise ValueError('A sequentially read TFDS source has no stable example index.')
    part = self.process_part(self.train_split, process_index, process_count)
    if part is not None:
      return self._own_files_stream(part, seed, epoch, epoch_len, start,
                                    process_index, process_count, batch_size), None
    epoch_seed = derive_seed(seed, epoch)
    ds = self.read(self.train_split, shuffle_seed=epoch_seed)
    ds = ds.shuffle(self.shuffle_buffer, seed=epoch_seed,
                    reshuffle_each_iteration=False)
    ds = ds.take(epoch_len).enumerate().skip(start)
    return ds.filter(lambda pos, _: owner(pos, batch_size, process_count)
                     == process_index), None

  def _own_files_stream(self, part, seed, epoch, epoch_len, start,
                        process_index, process_count, batch_size):
    """This process's rows of the epoch, streamed from its own part of the split.

    Its k-th example fills row k mod L of its rows of global batch k // L."""
    local = batch_size // process_count
    part_seed = derive_seed(seed, epoch, process_index, process_count)
    ds = self.read(part, shuffle_seed=part_seed)
    ds = ds.shuffle(self.shuffle_buffer, seed=part_seed,
                    reshuffle_each_iteration=False)
    ds = ds.take(epoch_len // process_count).enumerate().skip(start // process_count)
    return ds.map(lambda k, raw: (
        k // local * batch_size + process_index * local + k % local, raw))

  def eval_stream(self, process_index, process_count):
    if self.random_access:
      n = len(self.records(self.eval_split))
      index = np.arange(process_index, n, process_count)
      ds = self.read_rows(self.eval_split, index, index)
      return ds.map(lambda _, raw: raw), None
    ds = self.read(self.eval_split)
    return ds.shard(process_count, process_index), None


# ----------------------------------------------------------------------------
# The iterators.


def _numpy_batches(ds, source: Source, paths, local_batch: int,
                   explain) -> Iterator[dict]:
  """Iterates `ds` as numpy; a failure goes to source.explain, then `explain`."""
  iterator = ds.as_numpy_iterator()
  done = 0
  while True:
    try:
      batch = next(iterator)
    except StopIteration:
      break
    except tf.errors.OpError as e:
      source.explain(e, None if paths is None else paths[done * local_batch:])
      if explain is not None:
        explain(e)
      raise
    done += 1
    yield batch


def train_batches(source: Source, example_fn, *, seed: int, batch_size: int,
                  steps_per_epoch: int, start_step: int = 0,
                  process_index: int = 0, process_count: int = 1,
                  with_index: bool = False, explain=None) -> Iterator[dict]:
  """Infinite local train batches from `start_step` on (see the module docstring).

  example_fn(raw, seed) -> dict of tensors: one example of the stream (raw as
  the source's train_stream yields it) with its stateless seed [2] int64.
  explain(error): called when a batch fails to compute; may raise a clearer
  error (e.g. a UserError for a failed in-graph data check).
  """
  check_process(process_index, process_count)
  if start_step < 0:
    raise ValueError(f'start_step must be >= 0, got {start_step}.')
  if steps_per_epoch < 1:
    raise ValueError(f'steps_per_epoch must be >= 1, got {steps_per_epoch}.')
  local_batch = local_batch_size(batch_size, process_count, 'batch_size')
  return _train_batches(source, example_fn, seed, batch_size, local_batch,
                        steps_per_epoch, start_step, process_index,
                        process_count, with_index, explain)


def _epoch_batches(source, example_fn, seed, epoch, epoch_len, start, local_batch,
                   process_index, process_count, with_index,
                   explain) -> Iterator[dict]:
  """The batches of one epoch, from global position `start` on."""
  ds, paths = source.train_stream(seed, epoch, epoch_len, start,
                                  process_index, process_count,
                                  local_batch * process_count,
                                  with_index=with_index)
  epoch_seed = tf.constant([derive_seed(seed, epoch, 1), 0], tf.int64)

  def example(pos, raw):
    return example_fn(raw, tf.random.experimental.stateless_fold_in(epoch_seed, pos))

  ds = ds.map(example, num_parallel_calls=tf.data.AUTOTUNE)
  if source.corrupt_images == 'skip':
    # Drop undecodable files, top the epoch up with its first examples.
    ds = ds.ignore_errors(log_warning=True).repeat()
    ds = ds.take((epoch_len - start) // process_count)
  ds = finish(ds.batch(local_batch, drop_remainder=True))
  yield from _numpy_batches(ds, source, paths, local_batch, explain)


def _started(batches: Iterator[dict]) -> Iterator[dict]:
  """Runs `batches` up to its first batch (builds the pipeline)."""
  first = next(batches, None)
  return iter(()) if first is None else itertools.chain([first], batches)


def _train_batches(source, example_fn, seed, batch_size, local_batch, spe,
                   start_step, process_index, process_count, with_index, explain):
  first_epoch, first_step = divmod(start_step, spe)
  epoch_len = spe * batch_size

  def epoch_batches(epoch):
    start = first_step * batch_size if epoch == first_epoch else 0
    return _started(_epoch_batches(source, example_fn, seed, epoch, epoch_len,
                                   start, local_batch, process_index,
                                   process_count, with_index, explain))

  with concurrent.futures.ThreadPoolExecutor(1) as pool:
    pending = pool.submit(epoch_batches, first_epoch)
    for epoch in itertools.count(first_epoch):
      batches, pending = pending.result(), None
      steps = spe - (first_step if epoch == first_epoch else 0)
      for i, batch in enumerate(batches):
        if pending is None and steps - i <= LOOKAHEAD_STEPS:
          pending = pool.submit(epoch_batches, epoch + 1)
        yield batch
      if pending is None:
        pending = pool.submit(epoch_batches, epoch + 1)


def eval_batches(source: Source, example_fn, padding: dict, *, batch_size: int,
                 process_index: int = 0, process_count: int = 1,
                 explain=None) -> Iterator[dict]:
  """One pass over the eval split (see the module docstring).

  example_fn(raw) -> dict of tensors for one element of the eval stream;
  padding: the dict (same structure, with mask=False) that fills the rows
  beyond the data. Examples a 'skip' source drops are logged and become
  padding too.
  """
  check_process(process_index, process_count)
  local_batch = local_batch_size(batch_size, process_count, 'batch_size')
  n = source.info.num_eval_examples
  num_batches = math.ceil(math.ceil(n / process_count) / local_batch)
  ds, paths = source.eval_stream(process_index, process_count)
  ds = ds.map(lambda *raw: example_fn(raw), num_parallel_calls=tf.data.AUTOTUNE)
  if source.corrupt_images == 'skip':
    ds = ds.ignore_errors(log_warning=True)
  padding = tf.data.Dataset.from_tensors(padding).repeat()
  ds = ds.concatenate(padding).take(num_batches * local_batch)
  ds = finish(ds.batch(local_batch))
  batches = _numpy_batches(ds, source, paths, local_batch, explain)
  if source.corrupt_images != 'skip':
    return batches
  return _counted(batches, len(range(process_index, n, process_count)))


def _counted(batches, expected: int) -> Iterator[dict]:
  """`batches`, with a warning at the end if fewer than `expected` rows were real."""
  seen = 0
  for batch in batches:
    seen += int(batch['mask'].sum())
    yield batch
  if seen < expected:
    _log.warning(
        'Eval: %d of the %d examples of this process could not be decoded '
        'and were left out (mask=False).', expected - seen, expected)
