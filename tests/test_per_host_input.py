"""Per-host input from TFDS: each process reads only its share (issue 17).

A tiny TFDS set (40 train / 10 test images, 4 files per split; image i is
filled with the value i) is prepared twice, as ArrayRecord and as TFRecord.
ArrayRecord (random access): with 2 processes each one reads exactly the
records of its own rows (counted on the TFDS data source), the two local
streams stacked are the one-process stream row for row, and a resume at step
k reads no record of the steps before k. TFRecord (streamed): each process
reads only its own files (its stream is unchanged when every other train file
is deleted), and the two processes' epochs hold every example once.
"""

import collections
import itertools
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from tensorflow_datasets.core.data_sources import base as tfds_data_sources

from vitjax import data
from vitjax.config import default_config
from vitjax.data import input_pipeline
from vitjax.data import source as source_lib

pytest.importorskip("array_record", reason="TFDS random access needs the array_record package")

N_TRAIN, N_TEST, N_FILES = 40, 10, 4
BATCH, SPE = 8, 5  # 40 // 8 = 5 steps per epoch; 4 rows per process with 2 processes


class VitjaxPerHostTiny(tfds.core.GeneratorBasedBuilder):
  """Image i is a 5x6 RGB image of the value i; label i % 3."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)),
            "label": tfds.features.ClassLabel(names=["a", "b", "c"]),
        }),
        supervised_keys=("image", "label"))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(N_TRAIN), "test": self._generate_examples(N_TEST)}

  def _generate_examples(self, n):
    for i in range(n):
      yield i, {"image": np.full((5, 6, 3), i, np.uint8), "label": i % 3}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  """{file format: data_dir} of the tiny set, prepared in 4 files per split."""
  dirs = {}
  for file_format in ("array_record", "tfrecord"):
    data_dir = str(tmp_path_factory.mktemp(file_format))
    builder = tfds.builder("vitjax_per_host_tiny", data_dir=data_dir, file_format=file_format)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(num_shards=N_FILES))
    dirs[file_format] = data_dir
  return dirs


def _config(data_dir, geometry=False):
  c = default_config()
  c.seed = 3
  c.dataset.update(name="vitjax_per_host_tiny", data_dir=data_dir, eval_split="test",
                   shuffle_buffer=16)
  c.input.update(image_size=8, train_augment="random_crop", crop_padding=1, flip=True,
                 return_geometry=geometry)
  c.batch_size, c.eval_batch_size = BATCH, 4
  return c


@pytest.fixture
def counted(monkeypatch):
  """Records every TFDS data-source read on the data source, and every source made.

  Returns the list of sources `input_pipeline.make_source` built; the keys a
  source's train reader was asked for are `reads(source, split)`, one tuple
  per request."""
  base = tfds_data_sources.BaseDataSource
  get_one, get_many = base.__getitem__, base.__getitems__

  def getitem(self, key):
    self.__dict__.setdefault("read_log", []).append((int(key),))
    return get_one(self, key)

  def getitems(self, keys):
    self.__dict__.setdefault("read_log", []).append(tuple(int(k) for k in keys))
    return get_many(self, keys)

  monkeypatch.setattr(base, "__getitem__", getitem)
  monkeypatch.setattr(base, "__getitems__", getitems)
  made = []
  make = input_pipeline.make_source

  def make_source(config):
    made.append(make(config))
    return made[-1]

  monkeypatch.setattr(input_pipeline, "make_source", make_source)
  return made


def reads(source, split="train"):
  return list(source.records(split).__dict__.get("read_log", []))


def _take(iterator, n):
  batches = list(itertools.islice(iterator, n))
  iterator.close()  # stops its look-ahead before the reads are inspected
  return batches


def _stacked_equal(local, full):
  for step, whole in enumerate(full):
    for key in whole:
      np.testing.assert_array_equal(np.concatenate([part[step][key] for part in local]),
                                    whole[key], err_msg=f"step {step}, {key}")


def _own_chunks(full, process_index, process_count, first_step):
  """The read requests process i may make: its rows of each step >= first_step,
  in requests of READ_CHUNK (set to 4 rows in these tests)."""
  rows = BATCH // process_count
  chunks = collections.Counter()
  for batch in full[first_step:]:
    own = batch["index"][process_index * rows:(process_index + 1) * rows].tolist()
    for i in range(0, rows, 4):
      chunks[tuple(own[i:i + 4])] += 1
  return chunks


def _assert_reads_only(log, allowed, needed):
  """Every request in `log` is one of `allowed`, and all of `needed` were made."""
  got = collections.Counter(log)
  assert not got - allowed, f"read records outside this process's rows: {got - allowed}"
  assert not needed - got, f"rows yielded but never read: {needed - got}"


def test_array_record_processes_read_only_their_rows(prepared, counted, monkeypatch):
  monkeypatch.setattr(source_lib, "READ_CHUNK", 4)
  c = _config(prepared["array_record"], geometry=True)
  source = input_pipeline.make_source(c)
  assert source.random_access
  n = 2 * SPE  # two epochs
  full = _take(data.train_iterator(c), 3 * SPE)  # a third epoch: what look-ahead may read
  assert len(set(full[0]["index"].tolist() + full[1]["index"].tolist())) == 2 * BATCH
  single = reads(counted[-1])
  assert sum(map(len, single)) >= n * BATCH
  local, logs = [], []
  for i in range(2):
    local.append(_take(data.train_iterator(c, process_index=i, process_count=2), n))
    logs.append(reads(counted[-1]))
    _assert_reads_only(logs[i], _own_chunks(full, i, 2, 0), _own_chunks(full[:n], i, 2, 0))
  _stacked_equal(local, full[:n])
  # Disjoint: together the two processes read each row of a step once.
  for step in full[:n]:
    assert not set(step["index"][:4].tolist()) & set(step["index"][4:].tolist())


def test_array_record_resume_reads_nothing_it_skips(prepared, counted, monkeypatch):
  monkeypatch.setattr(source_lib, "READ_CHUNK", 4)
  c = _config(prepared["array_record"], geometry=True)
  full = _take(data.train_iterator(c), 3 * SPE)
  k, n = SPE + 2, 2 * SPE  # inside the second epoch
  for process_index, process_count in ((0, 1), (0, 2), (1, 2)):
    resumed = _take(data.train_iterator(c, start_step=k, process_index=process_index,
                                        process_count=process_count), n - k)
    rows = BATCH // process_count
    for step, batch in enumerate(resumed):
      for key in batch:
        np.testing.assert_array_equal(
            batch[key], full[k + step][key][process_index * rows:(process_index + 1) * rows])
    log = reads(counted[-1])  # no request holds a row of a step < k
    _assert_reads_only(log, _own_chunks(full, process_index, process_count, k),
                       _own_chunks(full[:n], process_index, process_count, k))


def test_array_record_eval_reads_each_process_share(prepared, counted):
  c = _config(prepared["array_record"])
  one = list(data.eval_iterator(c))
  assert sum(int(b["mask"].sum()) for b in one) == N_TEST
  for i in range(2):
    local = list(data.eval_iterator(c, process_index=i, process_count=2))
    assert sorted(r for chunk in reads(counted[-1], "test") for r in chunk) == list(
        range(i, N_TEST, 2))
    for key in ("image", "label"):
      want = np.concatenate([b[key][b["mask"]] for b in one])[i::2]
      np.testing.assert_array_equal(
          np.concatenate([b[key][b["mask"]] for b in local]), want, err_msg=key)


def test_both_formats_decode_an_example_to_the_same_tensors(prepared):
  """Eval is in stored order, the same in both formats: batches bit-identical."""
  batches = {f: list(data.eval_iterator(_config(d))) for f, d in prepared.items()}
  assert len(batches["array_record"]) == len(batches["tfrecord"]) == 3
  for a, b in zip(batches["array_record"], batches["tfrecord"]):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def _ids(batches, c):
  """The example id of every row (its images are constant: image i is i / 255)."""
  image = np.stack([b["image"] for b in batches])[..., 0, 0, 0]
  value = image * c.input.std[0] + c.input.mean[0]
  return np.rint(value * 255).astype(int).reshape(-1).tolist()


def _train_file_ids(data_dir):
  """{train file name: the example ids stored in it}, read from the files themselves."""
  builder = tfds.builder("vitjax_per_host_tiny", data_dir=data_dir)
  features, ids = builder.info.features, {}
  for name in sorted(tf.io.gfile.listdir(builder.data_dir)):
    if "-train.tfrecord-" in name:
      records = tf.data.TFRecordDataset(os.path.join(builder.data_dir, name))
      ids[name] = {int(features.deserialize_example(r)["image"][0, 0, 0]) for r in records}
  return builder.data_dir, ids


def test_tfrecord_processes_stream_only_their_own_files(prepared, tmp_path):
  c = _config(prepared["tfrecord"])
  c.input.update(train_augment="none", flip=False)  # rows keep their example's id
  folder, files = _train_file_ids(prepared["tfrecord"])
  assert len(files) == N_FILES and sorted(set().union(*files.values())) == list(range(N_TRAIN))
  names = sorted(files)
  n = SPE + 1
  epochs = []
  for i in range(2):
    local = _take(data.train_iterator(c, process_index=i, process_count=2), n)
    # Only its own files on disk: the same stream.
    own = names[2 * i:2 * i + 2]
    alone = tmp_path / f"p{i}"
    shutil.copytree(prepared["tfrecord"], alone)
    for name in names:
      if name not in own:
        os.remove(alone / os.path.relpath(folder, prepared["tfrecord"]) / name)
    c_alone = _config(str(alone))
    c_alone.input.update(train_augment="none", flip=False)
    alone_local = _take(data.train_iterator(c_alone, process_index=i, process_count=2), n)
    for a, b in zip(local, alone_local):
      for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    ids = _ids(local[:SPE], c)
    assert set(ids) <= files[own[0]] | files[own[1]]
    epochs.append(ids)
    # A resume inside the epoch gives this process's uninterrupted stream.
    resumed = _take(data.train_iterator(c, start_step=2, process_index=i, process_count=2),
                    n - 2)
    for a, b in zip(resumed, local[2:]):
      for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  # The global batches of an epoch hold every example once.
  assert sorted(epochs[0] + epochs[1]) == list(range(N_TRAIN))
