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
The source contract and the resumable, per-process iterator skeleton that
this module, `dense` and `detection` share are in `vitjax.data.source`.

Train order, a pure function of (config.seed, global step):

* epoch e = step // steps_per_epoch, with steps_per_epoch = number of train
  examples // global batch size; the remainder is dropped at the end of each
  epoch, so step s is always batch (s mod steps_per_epoch) of epoch e.
* digits / imagefolder (random access): epoch e reads the examples in the
  order of a numpy permutation seeded by (seed, e). Resuming inside an epoch
  slices the index list, so skipped examples are never read.
* TFDS prepared as ArrayRecord (random access, `tfds.data_source`): as
  digits / imagefolder, a permutation seeded by (seed, e) of the split's
  record indices; each process reads only the records of its rows, and a
  resume reads no record of the skipped steps.
* TFDS prepared as TFRecord (sequential reading): epoch e reads the split
  with its files shuffled by TFDS (`ReadConfig.shuffle_seed` = f(seed, e)),
  then a seeded shuffle buffer (config.dataset.shuffle_buffer, seed
  f(seed, e)), then `skip` to the resume position (skipped records are read
  again, images still encoded). With P > 1 processes and at least P files,
  each process streams only its own part of the split
  (`tfds.even_splits`), see `vitjax.data.source`.
* Process i of P takes rows [i*L, (i+1)*L) of every global batch of that
  order (L = config.batch_size // P), so the local batches of step k, stacked
  in process order, are exactly the single-process batch of step k, row for
  row - except for a TFRecord split streamed per process, whose global batch
  is P local shares (well defined for a given P, not the P=1 batch).
* Augmentation is stateless; the seed of an example is derived from
  (seed, epoch, position in the epoch) - not from the process.

Note: the per-example order of a streamed (TFRecord) TFDS epoch also depends
on how the data set was prepared (its file sharding); it is fixed for a given
prepared copy. An ArrayRecord epoch depends only on the stored record order.

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

import os
from collections.abc import Iterator

import numpy as np
import tensorflow as tf

from vitjax.data import augment as augment_lib
from vitjax.data import digits
from vitjax.data import digits_multilabel
from vitjax.data import imagefolder
from vitjax.data import preprocess
from vitjax.data import source as source_lib
from vitjax.data.source import DatasetInfo
from vitjax.errors import UserError


def _hide_accelerators_from_tf() -> None:
  """TF only feeds the host; the accelerators belong to JAX."""
  try:
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError:  # TF devices already initialized elsewhere.
    pass


_hide_accelerators_from_tf()


# ----------------------------------------------------------------------------
# Config checks.


def preprocessing(config) -> preprocess.Preprocessing:
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


# ----------------------------------------------------------------------------
# Sources (the contract: vitjax.data.source).


def _digits_source(config) -> source_lib.Source:
  train = digits.load_split(config.dataset.train_split)
  eval_ = digits.load_split(config.dataset.eval_split)
  info = DatasetInfo(
      num_classes=len(digits.CLASS_NAMES), num_train_examples=len(train[1]),
      num_eval_examples=len(eval_[1]), class_names=digits.CLASS_NAMES)
  return source_lib.ArraySource(info=info, train_data=train, eval_data=eval_)


def _digits_multilabel_source(config) -> source_lib.Source:
  train = digits_multilabel.load_split(config.dataset.train_split)
  eval_ = digits_multilabel.load_split(config.dataset.eval_split)
  info = DatasetInfo(
      num_classes=len(digits_multilabel.CLASS_NAMES),
      num_train_examples=len(train[1]), num_eval_examples=len(eval_[1]),
      class_names=digits_multilabel.CLASS_NAMES, multi_label=True)
  return source_lib.ArraySource(info=info, train_data=train, eval_data=eval_)


def _path_array(paths) -> np.ndarray:
  # Bytes objects: a fixed-width numpy str array would take 4 bytes per char.
  return np.array([os.fsencode(p) for p in paths], dtype=object)


def _read_file(path, label):
  return tf.io.read_file(path), label


def _imagefolder_source(config) -> source_lib.Source:
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
  return source_lib.ArraySource(
      info=info, corrupt_images=policy,
      train_data=(_path_array(train.paths), train.labels),
      eval_data=(_path_array(eval_.paths), eval_.labels),
      load_fn=_read_file, has_paths=True)


class _TfdsSource(source_lib.TfdsSource):
  """A prepared TFDS classification dataset, read sequentially with SkipDecoding."""

  def __init__(self, config):  # pylint: disable=super-init-not-called
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
    self.builder, self.name, self.data_dir = builder, name, data_dir
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
    self.decoders = tfds.decode.PartialDecoding(
        {self._image_key: True, parts[0]: label_decode}, decoders=image_decoder)
    self._multi_label = multi_label
    self._num_classes = label.num_classes
    self.train_split = config.dataset.train_split
    self.eval_split = config.dataset.eval_split
    self.shuffle_buffer = int(config.dataset.get('shuffle_buffer', 10_000))
    if self.shuffle_buffer < 1:
      raise UserError(f'config.dataset.shuffle_buffer must be >= 1, got '
                      f'{self.shuffle_buffer}.')
    names = tuple(label.names) if label.names else tuple(
        str(i) for i in range(label.num_classes))
    source_lib.Source.__init__(self, info=DatasetInfo(
        num_classes=label.num_classes,
        num_train_examples=self.split_size(self.train_split),
        num_eval_examples=self.split_size(self.eval_split),
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

  def select(self, example):
    return example[self._image_key], self._label(example)


def make_source(config) -> source_lib.Source:
  """The classification source config.dataset names (digits, imagefolder, TFDS)."""
  name = config.dataset.name
  if name == 'digits':
    return _digits_source(config)
  if name == 'digits_multilabel':
    return _digits_multilabel_source(config)
  if name == 'imagefolder':
    return _imagefolder_source(config)
  return _TfdsSource(config)


# ----------------------------------------------------------------------------
# The trainer's API.


def get_dataset_info(config) -> DatasetInfo:
  return make_source(config).info


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
  source_lib.check_process(process_index, process_count)
  if start_step < 0:
    raise ValueError(f'start_step must be >= 0, got {start_step}.')
  source_lib.local_batch_size(config.batch_size, process_count, 'config.batch_size')
  prep = preprocessing(config)
  source = make_source(config)
  spe = steps_per_epoch(config, source.info)
  geometry = bool(config.input.get('return_geometry', False))
  if geometry and not source.random_access:
    raise UserError(
        'config.input.return_geometry=True (per-example index, crop box and '
        'flip in the train batches) needs a random-access source (digits, '
        'imagefolder, a TFDS set prepared as ArrayRecord); '
        f'{config.dataset.name!r} is read sequentially from TFRecord files, '
        'whose examples carry no stable index here. Fix: prepare it with '
        '`tfds build --file_format=array_record`.')

  def example(raw, seed):
    if geometry:
      index, raw = raw
    image, label = source.load(*raw)
    if not geometry:
      return dict(image=preprocess.train_image(image, seed, prep),
                  label=tf.cast(label, tf.int32))
    image, box, flipped = preprocess.train_image(image, seed, prep,
                                                 with_geometry=True)
    return dict(image=image, label=tf.cast(label, tf.int32),
                index=tf.cast(index, tf.int32), crop_box=box, flipped=flipped)

  return source_lib.train_batches(
      source, example, seed=config.seed, batch_size=config.batch_size,
      steps_per_epoch=spe, start_step=start_step, process_index=process_index,
      process_count=process_count, with_index=geometry)


def eval_iterator(config, *, process_index: int = 0,
                  process_count: int = 1) -> Iterator[dict]:
  """One pass over the eval split (see module docstring).

  Yields dict(image=float32 [b, S, S, 3], label=int32 [b], mask=bool [b]),
  b = config.eval_batch_size // process_count; every process yields the same
  number of batches and the mask=True rows of all processes together are the
  eval split, each example once.
  """
  source_lib.check_process(process_index, process_count)
  source_lib.local_batch_size(config.eval_batch_size, process_count,
                              'config.eval_batch_size')
  prep = preprocessing(config)
  source = make_source(config)

  def example(raw):
    image, label = source.load(*raw)
    return dict(image=preprocess.eval_image(image, prep),
                label=tf.cast(label, tf.int32), mask=tf.constant(True))

  size = prep.image_size
  label_shape = [source.info.num_classes] if source.info.multi_label else []
  padding = dict(image=tf.zeros([size, size, 3], tf.float32),
                 label=tf.zeros(label_shape, tf.int32), mask=tf.constant(False))
  return source_lib.eval_batches(
      source, example, padding, batch_size=config.eval_batch_size,
      process_index=process_index, process_count=process_count)


_preprocessing = preprocessing  # The name tests and older callers use.
