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
