"""Mask classification task: HF MaskFormer loss parity, PQ on hand-made
cases, panoptic target decoding, semantic inference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vitjax.tasks.mask_classification import (
    decode_panoptic, mask_classification_loss, panoptic_inference, panoptic_quality,
    pq_stats, semantic_inference)


def _case(seed=0, b=2, q=6, c=3, t=4, h=8, w=8, big=16):
  rng = np.random.default_rng(seed)
  class_logits = rng.normal(0, 2, (b, q, c + 1)).astype(np.float32)
  mask_logits = rng.normal(0, 2, (b, q, h, w)).astype(np.float32)
  masks = (rng.random((b, t, big, big)) < 0.3).astype(np.float32)
  classes = rng.integers(0, c, (b, t)).astype(np.int32)
  valid = np.array([[True, True, True, False], [True, False, False, False]])[:b, :t]
  return class_logits, mask_logits, masks, classes, valid


def test_loss_matches_hf(torch, transformers):
  from transformers.models.maskformer import modeling_maskformer as mf
  cl, ml, masks, classes, valid = _case()
  aux_cl, aux_ml, *_ = _case(seed=1)
  ours, _ = jax.jit(mask_classification_loss)(
      cl, {"masks": ml, "aux": [{"logits": aux_cl, "masks": aux_ml}]}, masks, classes, valid)

  matcher = mf.MaskFormerHungarianMatcher(cost_class=1.0, cost_mask=20.0, cost_dice=1.0)
  weights = {"loss_cross_entropy": 1.0, "loss_mask": 20.0, "loss_dice": 1.0}
  crit = mf.MaskFormerLoss(3, matcher=matcher, weight_dict=weights, eos_coef=0.1)
  t = torch.from_numpy
  mask_labels = [t(m[v]) for m, v in zip(masks, valid)]
  class_labels = [t(c[v]).long() for c, v in zip(classes, valid)]
  with torch.no_grad():
    parts = crit(t(ml), t(cl), mask_labels, class_labels,
                 [{"masks_queries_logits": t(aux_ml), "class_queries_logits": t(aux_cl)}])
  want = sum(v.item() * next(w for k, w in weights.items() if k in name)
             for name, v in parts.items())
  print(f"mask classification loss: ours {float(ours):.6f} HF {want:.6f} "
        f"diff {abs(float(ours) - want):.1e}")
  assert abs(float(ours) - want) <= 1e-5 * max(1.0, abs(want))


def test_decode_panoptic():
  label = np.zeros((1, 4, 4), np.int32)
  label[0, :2, :2] = 2 + 16 * 1   # instance 1, class 2
  label[0, 2:, 2:] = 1 + 16 * 2   # instance 2, class 1
  label[0, 3, 0] = 255
  masks, classes, valid, sem = decode_panoptic(jnp.asarray(label), 4)
  assert list(np.asarray(valid[0])) == [True, True, True, False]
  assert list(np.asarray(classes[0, :3])) == [0, 2, 1]
  assert float(masks[0, 0].sum()) == 16 - 8 - 1  # background minus the ignored pixel
  assert int(sem[0, 3, 0]) == 255 and int(sem[0, 0, 0]) == 2


def _onehot_prediction(label, num_queries=6, num_classes=4):
  """Class / mask logits that reproduce a panoptic label map exactly."""
  masks, classes, valid, _ = decode_panoptic(jnp.asarray(label), num_queries)
  cl = np.full((1, num_queries, num_classes + 1), -20.0, np.float32)
  cl[0, :, num_classes] = 20.0  # unused queries: no object
  for k in np.nonzero(np.asarray(valid[0]))[0]:
    cl[0, k] = -20.0
    cl[0, k, int(classes[0, k])] = 20.0
  ml = np.where(np.asarray(masks) > 0, 20.0, -20.0).astype(np.float32)
  return cl, ml


def _pq(cl, ml, label, num_segments=3):
  masks, classes, valid, sem = decode_panoptic(jnp.asarray(label), num_segments)
  seg, seg_cls = panoptic_inference(jnp.asarray(cl), jnp.asarray(ml))
  s = pq_stats(seg, seg_cls, masks, classes, valid, sem != 255, 4)
  return panoptic_quality(s["tp"], s["fp"], s["fn"], s["iou"])


def test_pq_perfect_and_one_missed_segment():
  label = np.zeros((1, 8, 8), np.int32)
  label[0, :3, :3] = 1 + 16 * 1
  label[0, 4:, 4:] = 2 + 16 * 2
  cl, ml = _onehot_prediction(label)
  r = _pq(cl, ml, label)
  assert r["pq"] == pytest.approx(1.0) and r["sq"] == 1.0 and r["rq"] == 1.0
  # Drop instance 2 (its query says "no object"): class 2 has FN = 1 (PQ 0);
  # its 16 pixels go to the first kept query (argmax ties: background), so the
  # background segment has 55 pixels, 39 of them true: IoU 39/55 (a match);
  # class 1 stays perfect.
  cl2 = cl.copy()
  cl2[0, 2] = -20.0
  cl2[0, 2, 4] = 20.0
  r = _pq(cl2, ml, label)
  assert r["pq/2"] == 0.0 and r["pq/1"] == pytest.approx(1.0)
  assert r["pq/0"] == pytest.approx(39 / 55, abs=1e-6)
  assert r["pq"] == pytest.approx((39 / 55 + 1) / 3, abs=1e-6)
  assert r["rq"] == pytest.approx(2 / 3) and r["sq"] == pytest.approx((39 / 55 + 1) / 3, abs=1e-6)
  assert r["pq_things"] == pytest.approx(0.5) and r["pq_stuff"] == pytest.approx(39 / 55, abs=1e-6)


def test_pq_false_positive_and_low_iou():
  label = np.zeros((1, 8, 8), np.int32)
  label[0, :4, :4] = 1 + 16 * 1
  cl, ml = _onehot_prediction(label)
  ml = ml.copy()
  ml[0, 1, :4, :4] = -20.0
  ml[0, 1, 4:, 4:] = 20.0  # the circle predicted in the wrong place: IoU 0
  ml[0, 0, 4:, 4:] = -20.0
  r = _pq(cl, ml, label)
  # class 1: FP 1 + FN 1 -> PQ 0; background: pred 48 px vs true 48 px, overlap 32
  # -> IoU 0.5 -> no match.
  assert r["pq/1"] == 0.0 and r["pq"] == 0.0


def test_semantic_inference():
  cl = np.full((1, 2, 3), -10.0, np.float32)
  cl[0, 0, 1] = cl[0, 1, 0] = 10.0
  ml = np.full((1, 2, 2, 2), -10.0, np.float32)
  ml[0, 0, 0, :] = 10.0  # top row -> class 1
  ml[0, 1, 1, :] = 10.0  # bottom row -> class 0
  pred = np.asarray(jnp.argmax(semantic_inference(jnp.asarray(cl), jnp.asarray(ml)), -1))
  assert pred.tolist() == [[[1, 1], [0, 0]]]
