"""Tests for vitjax.data: sources, preprocessing, determinism and sharding."""

import io
import itertools
import logging
import os

import ml_collections
import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from vitjax import data
from vitjax.data import digits
from vitjax.data import imagefolder
from vitjax.errors import UserError


def make_config(**overrides):
  config = ml_collections.ConfigDict(dict(
      seed=3,
      batch_size=200,
      eval_batch_size=100,
      dataset=dict(name='digits', data_dir=None, train_split='train',
                   eval_split='test', shuffle_buffer=64,
                   corrupt_images='skip'),
      input=dict(image_size=8, train_augment='random_crop',
                 crop_scale=(0.3, 1.0), crop_padding=1, flip=True,
                 eval_resize=None, mean=(0.5, 0.5, 0.5),
                 std=(0.25, 0.25, 0.25)),
  ))
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split('.')
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


def take(iterator, n):
  return list(itertools.islice(iterator, n))


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)


# ---------------------------------------------------------------------------
# digits


def test_digits_shapes_and_dtypes():
  config = make_config(**{'input.image_size': 16})
  info = data.get_dataset_info(config)
  assert info == data.DatasetInfo(
      num_classes=10, num_train_examples=1437, num_eval_examples=360,
      class_names=tuple('0123456789'), image_channels=3)
  assert data.steps_per_epoch(config, info) == 1437 // 200
  batch = next(data.train_iterator(config))
  assert batch['image'].shape == (200, 16, 16, 3)
  assert batch['image'].dtype == np.float32
  assert batch['label'].shape == (200,) and batch['label'].dtype == np.int32
  batches = list(data.eval_iterator(config))
  assert [b['image'].shape for b in batches] == [(100, 16, 16, 3)] * 4
  assert all(b['mask'].dtype == np.bool_ for b in batches)
  assert sum(b['mask'].sum() for b in batches) == 360


def test_digits_split_is_fixed_disjoint_and_balanced():
  train, test = digits.split_indices('train'), digits.split_indices('test')
  assert len(train) == 1437 and len(test) == 360
  assert not set(train) & set(test)
  assert sorted(np.concatenate([train, test])) == list(range(1797))
  np.testing.assert_array_equal(
      train[:5], np.random.RandomState(0).permutation(1797)[:5])
  images, labels = digits.load_split('train')
  assert images.shape == (1437, 8, 8, 1) and images.dtype == np.float32
  assert images.min() == 0.0 and images.max() == 1.0
  np.testing.assert_array_equal(labels, digits.load_split('train')[1])
  for split, low, high in (('train', 120, 170), ('test', 25, 45)):
    counts = np.bincount(digits.load_split(split)[1], minlength=10)
    assert low <= counts.min() and counts.max() <= high, (split, counts)
  with pytest.raises(UserError, match="only 'train'"):
    data.get_dataset_info(make_config(**{'dataset.eval_split': 'validation'}))


def test_digits_normalization_matches_mean_std():
  mean, std = (0.5, 0.4, 0.3), (0.5, 0.25, 0.2)
  config = make_config(**{'input.mean': mean, 'input.std': std,
                          'input.train_augment': 'none', 'input.flip': False})
  expected_min = (0 - np.array(mean)) / np.array(std)
  expected_max = (1 - np.array(mean)) / np.array(std)
  for batch in (next(data.train_iterator(config)),
                next(data.eval_iterator(config))):
    image = batch['image']
    np.testing.assert_allclose(image.min(axis=(0, 1, 2)), expected_min,
                               atol=1e-5)
    np.testing.assert_allclose(image.max(axis=(0, 1, 2)), expected_max,
                               atol=1e-5)
  # Eval at the native size is exactly the normalized raw image.
  raw_images, raw_labels = digits.load_split('test')
  first = next(data.eval_iterator(config))
  np.testing.assert_allclose(first['image'][0, ..., 1],
                             (raw_images[0, ..., 0] - 0.4) / 0.25, atol=1e-5)
  np.testing.assert_array_equal(first['label'], raw_labels[:100])


def test_train_stream_is_deterministic_and_reshuffled_each_epoch():
  config = make_config()
  a = take(data.train_iterator(config), 8)
  b = take(data.train_iterator(config), 8)
  assert_batches_equal(a, b)
  # steps_per_epoch = 7: step 7 starts epoch 1 with a new order.
  assert not np.array_equal(a[0]['label'], a[7]['label'])
  other_seed = next(data.train_iterator(make_config(seed=4)))
  assert not np.array_equal(a[0]['label'], other_seed['label'])
  # Each epoch uses each example at most once.
  epoch = take(data.train_iterator(make_config(**{
      'input.train_augment': 'none', 'input.flip': False})), 7)
  sums = np.concatenate([b['image'].sum(axis=(1, 2, 3)) for b in epoch])
  assert len(sums) == 1400


@pytest.mark.parametrize('augment', ['random_crop', 'inception_crop'])
def test_resume_matches_uninterrupted(augment):
  config = make_config(**{'input.train_augment': augment})
  assert data.steps_per_epoch(config, data.get_dataset_info(config)) == 7
  uninterrupted = take(data.train_iterator(config), 9)
  resumed = take(data.train_iterator(config, start_step=5), 4)  # 5, 6 | 7, 8
  assert_batches_equal(resumed, uninterrupted[5:9])


def test_multi_process_shards_the_global_batch():
  config = make_config(**{'input.train_augment': 'inception_crop'})
  single = take(data.train_iterator(config, start_step=6), 2)  # steps 6, 7
  for i in range(2):
    local = take(data.train_iterator(config, start_step=6, process_index=i,
                                     process_count=2), 2)
    for step in range(2):
      assert local[step]['image'].shape == (100, 8, 8, 3)
      for key in ('image', 'label'):
        np.testing.assert_array_equal(local[step][key],
                                      single[step][key][i * 100:(i + 1) * 100])


def test_multi_process_eval_covers_split_once():
  config = make_config(eval_batch_size=64)
  single = list(data.eval_iterator(config))
  per_process = [list(data.eval_iterator(config, process_index=i,
                                         process_count=2)) for i in range(2)]
  assert len(per_process[0]) == len(per_process[1]) == 6  # ceil(180 / 32).
  for a, b in zip(*per_process):
    assert a['image'].shape == b['image'].shape == (32, 8, 8, 3)
  assert sum(b['mask'].sum() for p in per_process for b in p) == 360
  labels = lambda batches: sorted(
      np.concatenate([b['label'][b['mask']] for b in batches]))
  assert labels(per_process[0] + per_process[1]) == labels(single)


def test_batch_size_not_divisible_by_process_count():
  config = make_config(batch_size=10, eval_batch_size=9)
  with pytest.raises(UserError, match='divisible'):
    data.train_iterator(config, process_count=3)
  with pytest.raises(UserError, match='eval_batch_size'):
    data.eval_iterator(config, process_count=2)


@pytest.mark.parametrize('override, message', [
    ({'input.train_augment': 'mixup'}, 'train_augment'),
    ({'input.eval_resize': 4}, 'eval_resize'),
    ({'input.crop_scale': (0.5, 0.1)}, 'crop_scale'),
    ({'batch_size': 2000}, 'larger than the 1437'),
    ({'dataset.name': 'no_such_dataset_xyz'}, 'neither'),
])
def test_config_mistakes_are_user_errors(override, message):
  with pytest.raises(UserError, match=message):
    data.train_iterator(make_config(**override))


# ---------------------------------------------------------------------------
# imagefolder


def encode(array, fmt):
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, fmt)
  return buffer.getvalue()


def write_tree(root, split, per_class, seed=0):
  rng = np.random.RandomState(seed)
  formats = ('PNG', 'JPEG', 'GIF', 'BMP')
  for c, name in enumerate(('cat', 'dog', 'fish')):
    os.makedirs(root / split / name, exist_ok=True)
    for i in range(per_class):
      fmt = formats[i % len(formats)]
      size = (10 + i, 12 + c)
      array = rng.randint(0, 256, size + (3,), dtype=np.uint8)
      if i == 1:
        array = array[..., 0]  # Grayscale.
      (root / split / name / f'{i}.{fmt.lower()}').write_bytes(
          encode(array, fmt))


def folder_config(root, **overrides):
  overrides = {'dataset.name': 'imagefolder', 'dataset.data_dir': str(root),
               'dataset.eval_split': 'val', 'batch_size': 4,
               'eval_batch_size': 4, **overrides}
  return make_config(**overrides)


# JPEG start (SOI + APP0) and end (EOI) markers around garbage: passes the
# cheap indexing check, fails to decode.
BAD_INSIDE_JPEG = b'\xff\xd8\xff\xe0' + b'\0' * 500 + b'\xff\xd9'


@pytest.fixture
def broken_tree(tmp_path):
  """12 good train images, 6 good val images, 2 broken train files."""
  write_tree(tmp_path, 'train', per_class=4)
  write_tree(tmp_path, 'val', per_class=2, seed=1)
  (tmp_path / 'train' / 'cat' / 'x.jpg').write_text('just some notes\n')
  jpeg = encode(np.zeros((32, 32, 3), np.uint8) + 90, 'JPEG')
  (tmp_path / 'train' / 'dog' / 'trunc.jpg').write_bytes(jpeg[:len(jpeg) // 2])
  (tmp_path / 'train' / 'dog' / '.DS_Store').write_bytes(b'\0\1')  # Ignored.
  return tmp_path


def test_imagefolder_skips_and_counts_broken_files(broken_tree, caplog):
  config = folder_config(broken_tree)
  with caplog.at_level(logging.WARNING):
    info = data.get_dataset_info(config)
    batches = take(data.train_iterator(config), 3)  # One epoch.
  assert info.class_names == ('cat', 'dog', 'fish')
  assert (info.num_train_examples, info.num_eval_examples) == (12, 6)
  warnings = [r.getMessage() for r in caplog.records
              if 'skipped' in r.getMessage()]
  assert len(warnings) == 1 and 'skipped 2 file(s)' in warnings[0]
  index = imagefolder.index_split(str(broken_tree), 'train',
                                  info.class_names, 'skip')
  assert sorted(os.path.basename(p) for p, _ in index.skipped) == [
      'trunc.jpg', 'x.jpg']
  labels = np.concatenate([b['label'] for b in batches])
  assert np.bincount(labels).tolist() == [4, 4, 4]
  assert batches[0]['image'].shape == (4, 8, 8, 3)
  evals = list(data.eval_iterator(config))
  assert sum(b['mask'].sum() for b in evals) == 6


def test_imagefolder_error_mode_names_the_file(broken_tree):
  config = folder_config(broken_tree, **{'dataset.corrupt_images': 'error'})
  with pytest.raises(UserError, match=r"x\.jpg.*corrupt_images='skip'"):
    data.get_dataset_info(config)


def test_imagefolder_undecodable_file_with_valid_ends(tmp_path, caplog):
  """Header and trailer look fine, data does not decode: caught at runtime."""
  write_tree(tmp_path, 'train', per_class=4)
  write_tree(tmp_path, 'val', per_class=2, seed=1)
  (tmp_path / 'val' / 'fish' / 'bad.jpg').write_bytes(BAD_INSIDE_JPEG)
  assert imagefolder.check_file(str(tmp_path / 'val' / 'fish' / 'bad.jpg')) \
      is None  # Not detectable cheaply.

  config = folder_config(tmp_path)
  assert data.get_dataset_info(config).num_eval_examples == 7
  with caplog.at_level(logging.WARNING):
    evals = list(data.eval_iterator(config))
  assert len(evals) == 2 and sum(b['mask'].sum() for b in evals) == 6
  assert any('could not be decoded' in r.getMessage() for r in caplog.records)

  config = folder_config(tmp_path, **{'dataset.corrupt_images': 'error'})
  with pytest.raises(UserError, match=r'bad\.jpg'):
    list(data.eval_iterator(config))


def test_imagefolder_train_skip_keeps_epoch_length(tmp_path):
  write_tree(tmp_path, 'train', per_class=4)
  write_tree(tmp_path, 'val', per_class=1)
  (tmp_path / 'train' / 'cat' / 'bad.jpg').write_bytes(BAD_INSIDE_JPEG)
  config = folder_config(tmp_path, batch_size=13)  # 13 files: 1 step/epoch.
  batches = take(data.train_iterator(config), 2)
  assert [b['image'].shape[0] for b in batches] == [13, 13]
  config.dataset.corrupt_images = 'error'
  with pytest.raises(UserError, match=r'bad\.jpg'):
    take(data.train_iterator(config), 1)


def test_imagefolder_inception_crop_and_eval_resize(tmp_path):
  write_tree(tmp_path, 'train', per_class=1)
  write_tree(tmp_path, 'val', per_class=1)
  config = folder_config(tmp_path, batch_size=3, **{
      'input.eval_resize': 10, 'input.train_augment': 'inception_crop'})
  batch = next(data.eval_iterator(config))
  assert batch['image'].shape == (4, 8, 8, 3)
  assert batch['mask'].tolist() == [True, True, True, False]
  assert next(data.train_iterator(config))['image'].shape == (3, 8, 8, 3)
  with pytest.raises(UserError, match='larger than the 3 train examples'):
    data.train_iterator(folder_config(tmp_path, batch_size=4))


def test_imagefolder_layout_mistakes(tmp_path):
  with pytest.raises(UserError, match='does not exist'):
    data.get_dataset_info(folder_config(tmp_path / 'missing'))
  write_tree(tmp_path, 'train', per_class=1)
  with pytest.raises(UserError, match=r"val.*does not exist.*\['train'\]"):
    data.get_dataset_info(folder_config(tmp_path))
  write_tree(tmp_path, 'val', per_class=1)
  os.rename(tmp_path / 'val' / 'fish', tmp_path / 'val' / 'shark')
  with pytest.raises(UserError, match=r"missing \['fish'\].*\['shark'\]"):
    data.get_dataset_info(folder_config(tmp_path))
  with pytest.raises(UserError, match='data_dir'):
    data.get_dataset_info(folder_config(None))


# ---------------------------------------------------------------------------
# TFDS


class VitjaxTestTiny(tfds.core.GeneratorBasedBuilder):
  """A tiny image classification data set, built offline in the tests."""
  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(None, None, 3)),
            'label': tfds.features.ClassLabel(names=['a', 'b', 'c']),
        }),
        supervised_keys=('image', 'label'))

  def _split_generators(self, dl_manager):
    return {'train': self._generate_examples(50, 0),
            'test': self._generate_examples(11, 1)}

  def _generate_examples(self, n, seed):
    rng = np.random.RandomState(seed)
    for i in range(n):
      image = rng.randint(0, 256, (8 + i % 3, 9, 3), dtype=np.uint8)
      yield i, {'image': image, 'label': i % 3}


@pytest.fixture(scope='module')
def tiny_tfds_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  tfds.builder('vitjax_test_tiny', data_dir=data_dir).download_and_prepare()
  return data_dir


def tfds_config(data_dir, **overrides):
  return make_config(**{'dataset.name': 'vitjax_test_tiny',
                        'dataset.data_dir': data_dir, 'batch_size': 8,
                        'eval_batch_size': 4, 'dataset.shuffle_buffer': 16,
                        'input.train_augment': 'inception_crop',
                        **overrides})


def test_tfds_info_and_split_slicing(tiny_tfds_dir):
  info = data.get_dataset_info(tfds_config(tiny_tfds_dir))
  assert (info.num_classes, info.class_names) == (3, ('a', 'b', 'c'))
  assert (info.num_train_examples, info.num_eval_examples) == (50, 11)
  config = tfds_config(tiny_tfds_dir, **{'dataset.train_split': 'train[:80%]'})
  assert data.get_dataset_info(config).num_train_examples == 40
  evals = list(data.eval_iterator(config))
  assert len(evals) == 3 and sum(b['mask'].sum() for b in evals) == 11
  with pytest.raises(UserError, match='no split'):
    data.get_dataset_info(
        tfds_config(tiny_tfds_dir, **{'dataset.eval_split': 'validation'}))


def test_tfds_resume_and_multi_process(tiny_tfds_dir):
  config = tfds_config(tiny_tfds_dir)  # steps_per_epoch = 50 // 8 = 6.
  uninterrupted = take(data.train_iterator(config), 8)
  assert not np.array_equal(uninterrupted[0]['label'],
                            uninterrupted[6]['label'])
  resumed = take(data.train_iterator(config, start_step=4), 4)  # 4, 5 | 6, 7
  assert_batches_equal(resumed, uninterrupted[4:8])
  for i in range(2):
    local = take(data.train_iterator(config, start_step=5, process_index=i,
                                     process_count=2), 2)
    for step in range(2):
      for key in ('image', 'label'):
        np.testing.assert_array_equal(local[step][key],
                                      uninterrupted[5 + step][key][i * 4:(i + 1) * 4])


def test_tfds_mock_cifar10():
  config = make_config(**{'dataset.name': 'cifar10', 'batch_size': 8,
                          'eval_batch_size': 8, 'input.image_size': 32})
  with tfds.testing.mock_data(num_examples=16):
    info = data.get_dataset_info(config)
    train = next(data.train_iterator(config))
    evals = list(data.eval_iterator(config))
  # (The mock knows no label names: the real ones come from the prepared data.)
  assert info.num_classes == 10 and len(info.class_names) == 10
  assert info.num_train_examples == 16
  assert train['image'].shape == (8, 32, 32, 3)
  assert train['label'].dtype == np.int32
  assert len(evals) == 2 and sum(b['mask'].sum() for b in evals) == 16


def test_tfds_not_prepared_is_user_error_without_download(tmp_path,
                                                          monkeypatch):
  def no_download(*args, **kwargs):
    raise AssertionError('a download was attempted')

  monkeypatch.setattr(tfds.core.DatasetBuilder, 'download_and_prepare',
                      no_download)
  config = make_config(**{'dataset.name': 'cifar100',
                          'dataset.data_dir': str(tmp_path)})
  with pytest.raises(UserError,
                     match=r'not prepared.*tfds build cifar100 --data_dir'):
    data.get_dataset_info(config)
