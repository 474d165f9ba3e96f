"""Shapes dataset, dense input pipeline, segmentation metrics and an end-to-end run.

- shapes: deterministic in (seed, split, index); masks inside tight boxes,
  class ids 1..3, no empty objects; COCO JSON round trip through pycocotools;
  bad COCO data refused with UserErrors.
- dense pipeline: augmentation keeps image and label map aligned; batches are
  a function of (seed, step); eval pads with mask=False; TFDS (mocked)
  segmentation data, including masks of the wrong size.
- mIoU / pixel accuracy against a hand-computed confusion matrix.
- 3 steps of `python -m vitjax.main` with a tiny SegFormer.
"""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from conftest import run_main
from vitjax.config import default_config
from vitjax.data import dense, shapes
from vitjax.errors import UserError
from vitjax.tasks import get_task
from vitjax.tasks.segmentation import confusion_matrix, segmentation_metrics


# ---------------------------------------------------------------------------
# The shapes set.

def test_shapes_deterministic_and_splits_disjoint():
  a = shapes.generate("train", 4, seed=3, image_size=32)
  b = shapes.generate("train", 2, seed=3, image_size=32, start=2)
  for x, y in zip(a[2:], b):  # image i does not depend on how many are asked for
    np.testing.assert_array_equal(x["image"], y["image"])
    np.testing.assert_array_equal(x["boxes"], y["boxes"])
  other_seed = shapes.generate("train", 1, seed=4, image_size=32)[0]
  val = shapes.generate("validation", 1, seed=3, image_size=32)[0]
  assert not np.array_equal(a[0]["image"], other_seed["image"])
  assert not np.array_equal(a[0]["image"], val["image"])


def test_shapes_geometry():
  records = shapes.generate("test", 30, seed=0, image_size=48, max_objects=5)
  seen = set()
  for r in records:
    assert r["image"].shape == (48, 48, 3) and r["image"].dtype == np.uint8
    k = len(r["classes"])
    assert 1 <= k <= 5 and r["instance_masks"].shape == (k, 48, 48)
    assert r["instance_masks"].sum(0).max() <= 1  # objects never overlap
    union = np.zeros((48, 48), np.uint8)
    for m, (x0, y0, x1, y1), c in zip(r["instance_masks"], r["boxes"], r["classes"]):
      assert 1 <= c <= 3 and x1 > x0 and y1 > y0 and m.sum() >= 4
      ys, xs = np.nonzero(m)
      assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x0, y0, x1, y1)  # tight
      union[m] = c
      seen.add(int(c))
    np.testing.assert_array_equal(union, r["semantic_mask"])
  assert seen == {1, 2, 3}


def test_shapes_bad_arguments():
  with pytest.raises(UserError, match="image_size"):
    shapes.generate("train", 1, image_size=8)
  with pytest.raises(UserError, match="size_range"):
    shapes.generate("train", 1, size_range=(0.3, 0.2))
  with pytest.raises(UserError, match="split"):
    shapes.generate("val", 1)
  with pytest.raises(UserError, match=">= 1"):
    shapes.generate("train", 0)


def test_coco_round_trip(tmp_path):
  from pycocotools.coco import COCO  # pylint: disable=g-import-not-at-top
  records = shapes.generate("validation", 5, seed=1, image_size=32)
  path = shapes.write_coco(str(tmp_path), "validation", records=records)
  coco = COCO(path)
  assert sorted(c["name"] for c in coco.loadCats(coco.getCatIds())) == sorted(shapes.CLASS_NAMES)
  assert len(coco.getAnnIds()) == sum(len(r["classes"]) for r in records)
  ann = coco.loadAnns(coco.getAnnIds(imgIds=records[0]["id"]))[0]
  x0, y0, x1, y1 = records[0]["boxes"][0]
  assert ann["bbox"] == [x0, y0, x1 - x0, y1 - y0] and ann["iscrowd"] == 0
  assert ann["area"] == records[0]["instance_masks"][0].sum()
  back = shapes.load_coco(str(tmp_path), "validation")
  for r, b in zip(records, back):
    for key in ("image", "semantic_mask", "instance_masks", "boxes", "classes"):
      np.testing.assert_array_equal(r[key], b[key])


def test_coco_bad_data(tmp_path):
  path = shapes.write_coco(str(tmp_path), "train", n=2, image_size=32)
  with open(path) as f:
    good = json.load(f)

  def refused(edit, match):
    bad = json.loads(json.dumps(good))
    edit(bad)
    with open(path, "w") as f:
      json.dump(bad, f)
    with pytest.raises(UserError, match=match):
      shapes.load_coco(str(tmp_path), "train")

  refused(lambda c: c["annotations"][0].update(bbox=[3.0, 4.0, 0.0, 5.0]), "degenerate box")
  refused(lambda c: c["images"][0].update(width=40), "says 40x32")
  refused(lambda c: c["annotations"][0].update(segmentation=[[1, 1, 1, 1, 1, 1]]),
          "empty mask")
  with pytest.raises(UserError, match="No COCO annotations"):
    shapes.load_coco(str(tmp_path), "test")


# ---------------------------------------------------------------------------
# The dense pipeline.

def seg_config(**kw):
  c = default_config()
  c.task = "segmentation"
  c.dataset.name = "shapes"
  c.dataset.eval_split = "validation"
  c.input.image_size = 32
  c.batch_size = 4
  c.eval_batch_size = 8
  c.task_kwargs.num_train_images = 12
  c.task_kwargs.num_eval_images = 10
  for k, v in kw.items():
    c[k] = v if not isinstance(v, dict) else c[k].update(v) or c[k]
  return c


def _opts(**kw):
  c = seg_config()
  c.task_kwargs.update(kw)
  return dense._settings(c)  # pylint: disable=protected-access


@pytest.mark.parametrize("scale", [(1.0, 1.0), (0.5, 2.0)])
def test_augmentation_keeps_image_and_labels_aligned(scale):
  # The image colour encodes the class: class c has red = 60 c (+ green noise
  # the labels do not see); any misalignment shows up as a colour / label mismatch.
  r = shapes.generate("train", 1, seed=0, image_size=32)[0]
  label = r["semantic_mask"]
  image = np.stack([label * 60, (np.arange(32)[None, :] * 7 % 256) * np.ones((32, 1)),
                    np.zeros((32, 32))], -1).astype(np.uint8)
  opts = _opts(scale_range=scale, color_jitter=0.0)
  agree = []
  flips = set()
  for s in range(8):
    out = dense.train_example(tf.constant(image), tf.constant(label),
                              tf.constant([s, 7], tf.int64), opts)
    img, lab = out["image"].numpy(), out["label"].numpy()
    assert img.shape == (32, 32, 3) and lab.shape == (32, 32)
    red = (img[..., 0] * 0.5 + 0.5) * 255  # undo (x - 0.5) / 0.5
    labelled = lab != 255
    agree.append(np.mean(np.round(red[labelled] / 60) == lab[labelled]))
    green = (img[0, :, 1] * 0.5 + 0.5) * 255
    flips.add(bool(green[1] < green[0]) if scale == (1.0, 1.0) else None)
  if scale == (1.0, 1.0):
    assert min(agree) == 1.0 and flips == {True, False}  # exact, and both flip states seen
  else:  # bilinear image vs nearest labels only differ on object borders
    assert min(agree) > 0.93, agree


def test_train_batches_are_a_function_of_seed_and_step():
  c = seg_config()
  it = dense.train_iterator(c)
  batches = [next(it) for _ in range(5)]  # 3 steps per epoch: crosses an epoch
  resumed = next(dense.train_iterator(c, start_step=4))
  np.testing.assert_array_equal(batches[4]["image"], resumed["image"])
  np.testing.assert_array_equal(batches[4]["label"], resumed["label"])
  assert batches[0]["image"].shape == (4, 32, 32, 3) and batches[0]["label"].dtype == np.int32
  assert not np.array_equal(batches[0]["image"], batches[3]["image"])
  # Two processes' halves make up the single-process batch.
  halves = [next(dense.train_iterator(seg_config(batch_size=4), start_step=4,
                                      process_index=i, process_count=2)) for i in range(2)]
  np.testing.assert_array_equal(np.concatenate([h["label"] for h in halves]), resumed["label"])
  evals = list(dense.eval_iterator(c))
  assert len(evals) == 2 and sum(int(b["mask"].sum()) for b in evals) == 10
  assert (evals[1]["label"][~evals[1]["mask"]] == 255).all()


def test_bad_arrays_and_settings():
  with pytest.raises(UserError, match="masks"):
    dense.check_arrays(np.zeros((2, 8, 8, 3), np.uint8), np.zeros((2, 8, 7), np.uint8), "x")
  with pytest.raises(UserError, match="non-empty"):
    dense.check_arrays(np.zeros((0, 8, 8, 3), np.uint8), np.zeros((0, 8, 8), np.uint8), "x")
  with pytest.raises(UserError, match="scale_range"):
    _opts(scale_range=(0.0, 1.0))
  with pytest.raises(UserError, match="'shapes' \\(embedded\\) or 'tfds:"):
    dense.get_dataset_info(seg_config(dataset={"name": "digits"}))


def _mock_pet(mask_width):
  def as_dataset(self, split, **kwargs):
    del self, split, kwargs
    rng = np.random.default_rng(0)
    return tf.data.Dataset.from_tensor_slices(dict(
        image=rng.integers(0, 256, (6, 24, 40, 3)).astype(np.uint8),
        segmentation_mask=rng.integers(0, 5, (6, 24, mask_width, 1)).astype(np.uint8)))
  return tfds.testing.mock_data(num_examples=6, as_dataset_fn=as_dataset)


def test_tfds_segmentation_mock():
  c = seg_config(dataset={"name": "tfds:oxford_iiit_pet", "train_split": "train",
                          "eval_split": "test"}, batch_size=2, eval_batch_size=4)
  with pytest.raises(UserError, match="num_classes"):
    with _mock_pet(40):
      dense.get_dataset_info(c)
  c.task_kwargs.num_classes = 4  # pet masks: 1 pet, 2 background, 3 border (+ 0 unused)
  with _mock_pet(40):
    info = dense.get_dataset_info(c)
    train = next(dense.train_iterator(c))
    evals = list(dense.eval_iterator(c))
  assert info.num_classes == 4 and info.num_train_examples == 6
  assert train["image"].shape == (2, 32, 32, 3) and train["label"].shape == (2, 32, 32)
  assert set(np.unique(train["label"])) <= {0, 1, 2, 3, 255}
  assert 255 in evals[0]["label"]  # mask value 4 >= num_classes: ignored
  assert sum(int(b["mask"].sum()) for b in evals) == 6
  with _mock_pet(32):  # masks narrower than their images
    with pytest.raises(UserError, match="height/width differ"):
      next(dense.train_iterator(c))
  c.task_kwargs.mask_key = "mask"
  with _mock_pet(40), pytest.raises(UserError, match="no feature"):
    dense.get_dataset_info(c)


# ---------------------------------------------------------------------------
# Metrics.

def test_miou_against_hand_computed_confusion():
  labels = np.array([[0, 0, 1, 1], [2, 2, 255, 1]])
  preds = np.array([[0, 1, 1, 1], [2, 0, 2, 0]])
  cm = np.asarray(confusion_matrix(jnp.asarray(labels), jnp.asarray(preds), 4, 255))
  # rows: label, columns: prediction; the 255 pixel is left out; class 3 absent.
  want = np.array([[1, 1, 0, 0], [1, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])
  np.testing.assert_array_equal(cm, want)
  m = segmentation_metrics(cm, ["bg", "a", "b", "c"])
  iou = {"bg": 1 / (2 + 3 - 1), "a": 2 / (3 + 3 - 2), "b": 1 / (2 + 1 - 1)}
  for k, v in iou.items():
    assert m[f"iou/{k}"] == pytest.approx(v)
  assert "iou/c" not in m  # absent from labels and predictions
  assert m["miou"] == pytest.approx(np.mean(list(iou.values())))
  assert m["pixel_accuracy"] == pytest.approx(4 / 7)


def test_task_eval_sums_ignore_padding_rows():
  class Info:
    num_classes = 3
    class_names = ("a", "b", "c")

  class Fixed:  # a "model" whose logits say class 1 everywhere, at 1/4 resolution
    def apply(self, variables, x, train=False, rngs=None):
      del variables, train, rngs
      return jnp.zeros(x.shape[:1] + (2, 2, 3)).at[..., 1].set(1.0), {}

  task = get_task("segmentation")(seg_config(), Info(), Fixed())
  batch = dict(image=jnp.zeros((2, 8, 8, 3)), label=jnp.ones((2, 8, 8), jnp.int32),
               mask=jnp.array([True, False]))
  sums = task.eval_sums({}, {}, batch)
  assert float(sums["count"]) == 64 and float(sums["confusion"][1, 1]) == 64
  out = task.eval_summary({k: np.asarray(v, np.float64) for k, v in sums.items()})
  assert out["miou"] == 1.0 and out["pixel_accuracy"] == 1.0


# ---------------------------------------------------------------------------
# End to end.

def test_main_runs_segformer_on_shapes(tmp_path):
  run_main(str(tmp_path), "total_steps=3", "eval_every_steps=3", "log_every_steps=3",
           "batch_size=4", "eval_batch_size=8", "task_kwargs.num_train_images=12",
           "task_kwargs.num_eval_images=8", "input.image_size=32",
           config="configs/segformer_shapes.py:tiny")
  lines = [json.loads(l) for l in open(os.path.join(tmp_path, "metrics.jsonl"))]
  final = [l for l in lines if "eval/miou" in l][-1]
  assert final["step"] == 3 and 0 <= final["eval/miou"] <= 1
  assert "eval/iou/background" in final and np.isfinite(final["eval/loss"])
