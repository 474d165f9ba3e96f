"""Detection: the set loss against HF transformers' DETR / Deformable DETR losses,
matching, data pipeline, COCO mAP, the trainer's eval-output hook and the picture tool.

The HF parity calls transformers' loss functions (ForObjectDetectionLoss,
DeformableDetrForObjectDetectionLoss) on the same random predictions and
targets, auxiliary layers included: total and every component within 1e-5.
"""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vitjax.tasks import detection as det
from vitjax.tasks import matching


def _random_case(seed, b=3, q=7, c=4, layers=3, softmax=True, counts=(2, 0, 5)):
  rng = np.random.default_rng(seed)
  t = max(counts) + 1
  logits = rng.normal(size=(layers, b, q, c + (1 if softmax else 0))).astype(np.float32) * 2
  cxcy = rng.uniform(0.2, 0.8, (layers, b, q, 2))
  wh = rng.uniform(0.05, 0.4, (layers, b, q, 2))
  boxes = np.concatenate([cxcy, wh], -1).astype(np.float32)
  labels = np.zeros((b, t), np.int32)
  tboxes = np.zeros((b, t, 4), np.float32)
  valid = np.zeros((b, t), bool)
  for i, n in enumerate(counts):
    labels[i, :n] = rng.integers(0, c, n)
    tboxes[i, :n, :2] = rng.uniform(0.2, 0.8, (n, 2))
    tboxes[i, :n, 2:] = rng.uniform(0.05, 0.4, (n, 2))
    valid[i, :n] = True
  return logits, boxes, labels, tboxes, valid


def _hf_loss(torch, fn, logits, boxes, labels, tboxes, valid, **cfg):
  config = types.SimpleNamespace(class_cost=1, bbox_cost=5, giou_cost=2, eos_coefficient=0.1,
                                 bbox_loss_coefficient=5, giou_loss_coefficient=2,
                                 focal_alpha=0.25, num_labels=logits.shape[-1] - 1
                                 if cfg.get("softmax", True) else logits.shape[-1],
                                 auxiliary_loss=True, decoder_layers=logits.shape[0])
  targets = [{"class_labels": torch.as_tensor(labels[i][valid[i]]).long(),
              "boxes": torch.as_tensor(tboxes[i][valid[i]])} for i in range(len(labels))]
  lg, bx = torch.as_tensor(logits), torch.as_tensor(boxes)
  loss, parts, _ = fn(lg[-1], targets, "cpu", bx[-1], config, outputs_class=lg,
                      outputs_coord=bx)
  return float(loss), {k: float(v) for k, v in parts.items() if "cardinality" not in k}


def _ours(logits, boxes, labels, tboxes, valid, class_loss):
  opts = det.loss_options(types.SimpleNamespace(get=lambda k, d=None: {
      "task_kwargs": {"class_loss": class_loss}}.get(k, d)))
  out = {"boxes": boxes[-1], "aux": [{"logits": l, "boxes": b}
                                     for l, b in zip(logits[:-1], boxes[:-1])]}
  fn = jax.jit(lambda *a: det.set_loss(*a, opts))
  total, parts = fn(logits[-1], out, labels, tboxes, valid)
  return float(total), {k: float(v) for k, v in parts.items()}


@pytest.mark.parametrize("class_loss", ["softmax_ce", "sigmoid_focal"])
def test_set_loss_matches_hf(torch, transformers, class_loss):
  del transformers
  from transformers.loss import loss_deformable_detr, loss_for_object_detection  # pylint: disable=g-import-not-at-top
  softmax = class_loss == "softmax_ce"
  fn = (loss_for_object_detection.ForObjectDetectionLoss if softmax else
        loss_deformable_detr.DeformableDetrForObjectDetectionLoss)
  case = _random_case(0 if softmax else 1, softmax=softmax)
  ref_total, ref = _hf_loss(torch, fn, *case, softmax=softmax)
  total, parts = _ours(*case, class_loss)
  assert set(parts) == set(ref), (sorted(parts), sorted(ref))
  assert len(parts) == 9  # 3 components x (final + 2 aux layers)
  for k in ref:
    assert abs(parts[k] - ref[k]) <= 1e-5, (k, parts[k], ref[k])
  assert abs(total - ref_total) <= 1e-5 * max(1, abs(ref_total))


@pytest.mark.slow
def test_empty_images_give_no_object_loss_only():
  logits, boxes, labels, tboxes, valid = _random_case(2, counts=(0, 0, 0))
  total, parts = _ours(logits, boxes, labels, tboxes, valid, "softmax_ce")
  assert np.isfinite(total) and parts["loss_bbox"] == 0 and parts["loss_giou"] == 0
  assert parts["loss_ce"] > 0
  # Gradients are finite too.
  opts = det.loss_options(types.SimpleNamespace(get=lambda k, d=None: d))
  g = jax.grad(lambda lg, bx: det.set_loss(lg, {"boxes": bx}, labels, tboxes, valid, opts)[0],
               argnums=(0, 1))(jnp.asarray(logits[-1]), jnp.asarray(boxes[-1]))
  assert all(np.isfinite(np.asarray(x)).all() for x in g)


def test_match_is_optimal_and_jits():
  rng = np.random.default_rng(0)
  cost = rng.normal(size=(2, 6, 4)).astype(np.float32)
  valid = np.array([[1, 1, 1, 0], [0, 1, 0, 1]], bool)
  q = np.asarray(jax.jit(matching.match)(cost, valid))
  import itertools  # pylint: disable=g-import-not-at-top
  for b in range(2):
    cols = np.nonzero(valid[b])[0]
    best = min(sum(cost[b, p[i], c] for i, c in enumerate(cols))
               for p in itertools.permutations(range(6), len(cols)))
    assert np.isclose(sum(cost[b, q[b, c], c] for c in cols), best)
    assert len(set(q[b, cols])) == len(cols)


# ----------------------------------------------------------------------------
# COCO mAP.


def test_coco_map_hand_made():
  gt = [dict(classes=np.array([0, 1]), boxes=np.array([[0, 0, 10, 10], [20, 20, 40, 30.]]),
             height=64, width=64)]
  perfect = [dict(scores=np.array([0.9, 0.8]), classes=np.array([0, 1]),
                  boxes=gt[0]["boxes"].copy())]
  m = det.coco_map(perfect, gt, ["a", "b"])
  assert m["ap"] == pytest.approx(1.0) and m["ap50"] == pytest.approx(1.0)
  # One 10x10 box shifted by 2 px: IoU 80 / 120 = 0.667, a hit at IoU 0.50..0.65
  # (4 of COCO's 10 thresholds), a miss above: AP 0.4 for that class.
  shifted = [dict(scores=np.array([0.9]), classes=np.array([0]),
                  boxes=np.array([[2, 0, 12, 10.]]))]
  m = det.coco_map(shifted, [dict(gt[0], classes=gt[0]["classes"][:1],
                                  boxes=gt[0]["boxes"][:1])], ["a", "b"])
  assert m["ap"] == pytest.approx(0.4) and m["ap50"] == pytest.approx(1.0)
  assert m["ap75"] == pytest.approx(0.0) and m["ap_large"] == -1.0


# ----------------------------------------------------------------------------
# Data.


def _config(**kw):
  from vitjax.config import default_config  # pylint: disable=g-import-not-at-top
  c = default_config()
  c.task = "detection"
  c.dataset.name = "shapes"
  c.dataset.eval_split = "validation"
  c.task_kwargs.num_train_images = 8
  c.task_kwargs.num_eval_images = 3
  c.input.image_size = 32
  c.batch_size = 4
  c.eval_batch_size = 2
  c.model = {"num_queries": 6}
  for k, v in kw.items():
    c.task_kwargs[k] = v
  return c


def test_augmented_boxes_follow_the_object():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from vitjax.data import detection as dd  # pylint: disable=g-import-not-at-top
  img = np.zeros((40, 48, 3), np.uint8)
  img[8:20, 30:44] = 255  # one object: x 30..44, y 8..20
  targets = np.array([[30 / 48, 8 / 40, 44 / 48, 20 / 40, 2]], np.float32)
  opts = dd._settings(_config(scale_range=(0.6, 1.6), color_jitter=0.0))  # pylint: disable=protected-access
  seen_flip = seen_cut = 0
  for seed in range(12):
    ex = dd.train_example(tf.constant(img), tf.constant(targets),
                          tf.constant([seed, 1], tf.int64), opts)
    image = ex["image"].numpy() * 0.5 + 0.5  # default mean / std 0.5
    bright = image.mean(-1) > 0.5
    if not ex["box_valid"].numpy().any():
      assert not bright.any()  # the crop lost the object
      continue
    assert ex["box_valid"].numpy().sum() == 1 and ex["labels"].numpy()[0] == 2
    cx, cy, w, h = ex["boxes"].numpy()[0] * 32
    ys, xs = np.nonzero(bright)
    assert abs((cx - w / 2) - xs.min()) <= 1.5 and abs((cx + w / 2) - (xs.max() + 1)) <= 1.5
    assert abs((cy - h / 2) - ys.min()) <= 1.5 and abs((cy + h / 2) - (ys.max() + 1)) <= 1.5
    seen_flip += cx < 16
    seen_cut += xs.max() == 31 or ys.min() == 0
  assert seen_flip and seen_cut


def test_bad_boxes_clipped_dropped_or_refused():
  from vitjax.data import detection as dd  # pylint: disable=g-import-not-at-top
  from vitjax.errors import UserError  # pylint: disable=g-import-not-at-top
  rec = dict(image=np.zeros((10, 20, 3), np.uint8), classes=np.array([1, 2, 3]),
             boxes=np.array([[-5, 2, 8, 12], [4, 4, 4, 9], [1, 1, 3, 3]], np.float32))
  empty = dict(image=np.zeros((10, 20, 3), np.uint8), classes=np.zeros(0, np.int32),
               boxes=np.zeros((0, 4), np.float32))
  with pytest.warns(UserWarning, match="dropped 1 zero-area"):
    _, t = dd.pack_records([rec, empty], "x", 6, 6)
  np.testing.assert_allclose(t[0, 0], [0, 0.2, 0.4, 1.0, 0])  # clipped to the image
  assert t[0, 1, 4] == 2 and (t[1, :, 4] < 0).all()  # zero-area dropped; empty image kept
  with pytest.raises(UserError, match=r"2 objects but the model has num_queries=1"):
    dd.pack_records([rec], "x", 1, 1)
  with pytest.raises(UserError, match="num_queries=2"):
    dd.get_dataset_info(dict_config(_config(), num_queries=2))


def dict_config(c, num_queries):
  c.model = {"num_queries": num_queries}
  c.task_kwargs.shapes_max_objects = 4
  c.task_kwargs.num_train_images = 40
  return c


def test_shapes_batches_and_eval_padding():
  from vitjax.data import detection as dd  # pylint: disable=g-import-not-at-top
  c = _config()
  b = next(dd.train_iterator(c))
  assert b["image"].shape == (4, 32, 32, 3) and b["boxes"].shape == (4, 6, 4)
  assert b["box_valid"].any(1).all() and (b["boxes"][b["box_valid"]] > 0).all()
  batches = list(dd.eval_iterator(c))
  assert [x["mask"].tolist() for x in batches] == [[True, True], [True, False]]
  assert (batches[0]["orig_size"] == 32).all()


def test_tfds_coco_layout_mock():
  tfds = pytest.importorskip("tensorflow_datasets")
  from vitjax.data import detection as dd  # pylint: disable=g-import-not-at-top
  c = _config()
  c.dataset.name = "tfds:coco/2017"
  c.dataset.train_split, c.dataset.eval_split = "train", "validation"
  c.model = {"num_queries": 100}
  with tfds.testing.mock_data(num_examples=4):
    info = dd.get_dataset_info(c)
    b = next(dd.train_iterator(c))
  assert info.num_classes == 80 and len(info.class_names) == 80
  assert b["boxes"].shape == (4, 100, 4) and b["labels"].max() < 80
  assert np.isfinite(b["boxes"]).all() and (b["boxes"] >= 0).all() and (b["boxes"] <= 1).all()


# ----------------------------------------------------------------------------
# The picture tool.


@pytest.mark.slow
def test_detect_tool_draws_boxes(tmp_path, monkeypatch):
  from vitjax.models import create_model  # pylint: disable=g-import-not-at-top
  from vitjax.tools import detect  # pylint: disable=g-import-not-at-top
  c = _config()
  c.model_name = "detr_tiny"
  model = create_model("detr_tiny", num_queries=6, hidden_dim=16, num_heads=2, ffn_dim=16,
                       encoder_layers=1, decoder_layers=1)
  task = det.DetectionTask(c, det.DetectionTask.dataset_info(c), model)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
  monkeypatch.setattr(detect, "load_detector", lambda w: (c, task, dict(variables)))
  from PIL import Image  # pylint: disable=g-import-not-at-top
  src = tmp_path / "in.png"
  Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(src)
  paths = detect.run("unused", str(tmp_path / "out"), image=str(src), threshold=0.0,
                     display=64)
  pic = np.asarray(Image.open(paths[0]))
  assert pic.shape == (64, 64, 3)
  assert (pic != 128).any(-1).sum() > 50  # box outlines and labels drawn
  # draw() itself: an outline exactly at the box edge, the inside untouched.
  out = np.asarray(detect.draw(np.full((32, 32, 3), 128, np.uint8), [[0.25, 0.25, 0.75, 0.75]],
                               [1], [0.9], ["a", "b"], display=64))
  assert (out[16, 24:40] != 128).any(-1).all() and (out[32, 32] == 128).all()


def test_eval_summary_from_outputs_and_default_queries():
  from vitjax.data import detection as dd  # pylint: disable=g-import-not-at-top
  c = _config()
  task = det.DetectionTask(c, det.DetectionTask.dataset_info(c), model=None)
  box = np.array([[0.1, 0.1, 0.4, 0.5], [0, 0, 0, 0]], np.float32)  # xyxy; slot 2 padding
  o = dict(scores=np.array([[0.9, 0.1]]), classes=np.array([[2, 0]]), boxes=box[None],
           mask=np.array([True]), gt_boxes=box[None], gt_labels=np.array([[2, 0]]),
           gt_valid=np.array([[True, False]]), orig_size=np.array([[40.0, 60.0]]))
  pad = {k: np.concatenate([v, v]) for k, v in o.items()}
  pad["mask"] = np.array([False, False])
  m = task.eval_summary_from_outputs([o, pad])
  assert m["ap"] == pytest.approx(1.0)
  # Without config.model.num_queries the registry model's own count is the limit.
  c.model = {}
  c.model_name = "detr_tiny"
  assert dd.num_queries(c) == 20
