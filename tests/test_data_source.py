"""The data-source contract (vitjax.data.source), checked for every source.

For digits, ImageFolder, the shapes segmentation set and the shapes detection
set: starting at step k yields exactly the batches of an uninterrupted run
from step k (inside an epoch and across an epoch boundary); two processes'
local batches, stacked in process order, are the one-process global batch;
their eval rows together are the one-process eval split, each once. Then the
skeleton itself on a bare ArraySource: a new source gets all of it for free.
"""

import io
import itertools

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from vitjax import data
from vitjax.config import default_config
from vitjax.data import dense
from vitjax.data import detection
from vitjax.data import source as source_lib


def _classification(**kw):
  c = default_config()
  c.seed = 3
  c.input.update(image_size=8, train_augment="random_crop", crop_padding=1, flip=True)
  c.dataset.update(kw)
  return c


def _imagefolder(root):
  rng = np.random.RandomState(0)
  for split, per_class in (("train", 4), ("val", 3)):
    for k, name in enumerate(("cat", "dog", "fish")):
      (root / split / name).mkdir(parents=True)
      for i in range(per_class):
        buf = io.BytesIO()
        Image.fromarray(rng.randint(0, 256, (9 + i, 10 + k, 3), np.uint8)).save(buf, "PNG")
        (root / split / name / f"{i}.png").write_bytes(buf.getvalue())
  c = _classification(name="imagefolder", data_dir=str(root), eval_split="val")
  c.input.train_augment = "inception_crop"
  c.batch_size, c.eval_batch_size = 4, 4  # 12 images: 3 steps per epoch
  return c


def _dense(task, n_train, n_eval):
  c = default_config()
  c.task = task
  c.seed = 5
  c.dataset.update(name="shapes", eval_split="validation")
  c.input.image_size = 32
  c.task_kwargs.update(num_train_images=n_train, num_eval_images=n_eval)
  c.batch_size, c.eval_batch_size = 4, 4
  return c


def _source(name, tmp_path):
  """(train_iterator, eval_iterator, config, steps per epoch) of one source."""
  if name == "digits":
    c = _classification()
    c.batch_size, c.eval_batch_size = 200, 100   # 1437 // 200: 7 steps per epoch
    return data.train_iterator, data.eval_iterator, c, 7
  if name == "imagefolder":
    return data.train_iterator, data.eval_iterator, _imagefolder(tmp_path), 3
  if name == "segmentation":
    return dense.train_iterator, dense.eval_iterator, _dense("segmentation", 12, 6), 3
  if name == "detection":
    c = _dense("detection", 8, 5)
    c.model = {"num_queries": 6}
    return detection.train_iterator, detection.eval_iterator, c, 2
  raise ValueError(name)


SOURCES = ("digits", "imagefolder", "segmentation", "detection")


def _take(iterator, n):
  return list(itertools.islice(iterator, n))


def _assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)


@pytest.mark.parametrize("name", SOURCES)
def test_resume_at_any_step_matches_the_uninterrupted_run(name, tmp_path):
  train, _, c, spe = _source(name, tmp_path)
  n = 2 * spe + 1
  full = _take(train(c), n)
  assert not all(np.array_equal(full[0]["image"], b["image"]) for b in full[1:])
  for k in (1, spe, spe + 1):  # inside the first epoch, at and after the boundary
    _assert_same(_take(train(c, start_step=k), n - k), full[k:])


@pytest.mark.parametrize("name", SOURCES)
def test_two_processes_make_the_one_process_batches(name, tmp_path):
  train, evaluate, c, spe = _source(name, tmp_path)
  n = spe + 1  # across an epoch boundary
  full = _take(train(c, start_step=1), n)
  local = [_take(train(c, start_step=1, process_index=i, process_count=2), n)
           for i in range(2)]
  for step in range(n):
    for key in full[step]:
      np.testing.assert_array_equal(
          np.concatenate([local[0][step][key], local[1][step][key]]), full[step][key],
          err_msg=f"step {step}, {key}")
  one = list(evaluate(c))
  two = [list(evaluate(c, process_index=i, process_count=2)) for i in range(2)]
  assert len(two[0]) == len(two[1])
  rows = lambda batches, key: np.concatenate([b[key][b["mask"]] for b in batches])
  for key in one[0]:
    want = rows(one, key)
    got = [rows(t, key) for t in two]  # process i holds eval positions i, i + 2, ...
    assert len(got[0]) + len(got[1]) == len(want)
    np.testing.assert_array_equal(got[0], want[0::2], err_msg=key)
    np.testing.assert_array_equal(got[1], want[1::2], err_msg=key)


def test_skeleton_on_a_bare_array_source():
  """What a new source inherits: order from (seed, epoch), seeds from the position only."""
  n, batch, spe = 10, 4, 2
  info = source_lib.DatasetInfo(num_classes=1, num_train_examples=n, num_eval_examples=3,
                                class_names=("x",))
  src = source_lib.ArraySource(info=info, train_data=(np.arange(n), np.zeros(n)),
                               eval_data=(np.arange(3), np.zeros(3)))
  example = lambda raw, seed: dict(x=raw[0], seed=seed)

  def run(start=0, i=0, p=1, steps=2 * spe):
    return _take(source_lib.train_batches(src, example, seed=1, batch_size=batch,
                                          steps_per_epoch=spe, start_step=start,
                                          process_index=i, process_count=p), steps)

  full = run()
  for epoch in range(2):
    order = np.random.RandomState(source_lib.derive_seed(1, epoch) % 2**32).permutation(n)
    got = np.concatenate([b["x"] for b in full[epoch * spe:(epoch + 1) * spe]])
    np.testing.assert_array_equal(got, order[:spe * batch])  # the remainder is dropped
  assert len({tuple(s) for b in full for s in b["seed"]}) == len(full) * batch
  halves = [run(start=1, i=i, p=2, steps=3) for i in range(2)]
  for step in range(3):
    for key in ("x", "seed"):
      np.testing.assert_array_equal(
          np.concatenate([halves[0][step][key], halves[1][step][key]]), full[1 + step][key])
  padding = dict(x=tf.constant(-1, tf.int64), mask=tf.constant(False))
  evals = list(source_lib.eval_batches(
      src, lambda raw: dict(x=raw[0], mask=tf.constant(True)), padding, batch_size=2,
      process_index=1, process_count=2))
  # 3 examples, 2 processes of 1 row: process 1 holds position 1, then padding.
  assert [(b["x"].tolist(), b["mask"].tolist()) for b in evals] == [([1], [True]),
                                                                     ([-1], [False])]
