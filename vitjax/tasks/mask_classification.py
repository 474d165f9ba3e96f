"""Mask classification (MaskFormer, Cheng et al. 2021): set loss with Hungarian
matching; semantic and panoptic inference; mIoU and panoptic quality (PQ).

The model returns `(class_logits [B, Q, C + 1], out)` with `out['masks']`
[B, Q, h, w] (mask logits, e.g. at 1/4 of the input) and `out['aux']` (one
{'logits', 'masks'} per earlier decoder layer); class C is "no object".

Targets: per image T = K + 1 segments, padded: segment 0 is the background
(a "stuff" class, id 0), segment k the k-th instance ("things"); a segment is
valid when it has pixels. They come from the dense pipeline's 'panoptic'
label maps (vitjax.data.dense, shapes_labels='panoptic': class + 16 *
instance id per pixel, 255 = ignored), augmented like semantic maps.

Loss (paper Sec. 3.2 / 4, as HF MaskFormerLoss): match queries to valid
segments with scipy's Hungarian algorithm (vitjax.tasks.matching) on
  cost = -p(class) + 20 * focal(mask) + 1 * dice(mask)
(target masks resized nearest to the prediction's h x w); then
  CE over all queries (unmatched -> no object, weighted 0.1)
  + 20 * sigmoid focal (alpha 0.25, gamma 2; mean over pixels)
  + 1 * dice   (both on matched masks upsampled bilinearly to the label size,
                summed over segments / number of valid segments in the batch)
for the final and every auxiliary prediction.

Inference:
  semantic: per pixel argmax_c sum_q softmax(class)_q[c] * sigmoid(mask_q)
    (no-object dropped; masks upsampled to the label size first) -> mIoU,
    pixel accuracy (vitjax.tasks.segmentation's confusion matrix);
  panoptic: keep queries whose top class is not no-object with probability
    > object_threshold (0.8); each pixel goes to argmax_q p_q * sigmoid(mask_q)
    over kept queries; a query's segment survives when its pixels are > 0
    and > overlap_threshold (0.8) of its own mask (sigmoid >= 0.5); stuff
    segments of one class merge (paper Sec. A / detectron2 MaskFormer).
  PQ (Kirillov et al. 2019): per class, predicted and true segments of the
    class match when IoU > 0.5 (unique); PQ_c = sum IoU(TP) / (TP + FP/2 +
    FN/2), SQ_c = sum IoU(TP) / TP, RQ_c = TP / (TP + FP/2 + FN/2); PQ, SQ,
    RQ are means over classes that occur (in truth or predictions).
    Ignored pixels (255) are left out of every segment.
"""

import contextlib
import copy

import jax
import jax.numpy as jnp
import numpy as np

from vitjax.errors import UserError
from vitjax.models.maskformer import resize_nearest_torch
from vitjax.tasks.base import Task, apply_model, register_task
from vitjax.tasks.segmentation import (DENSE_DATA_KWARGS, confusion_matrix,
                                       segmentation_metrics)

PANOPTIC_STRIDE = 16  # vitjax.data.dense: label = class + 16 * instance id


# ----------------------------------------------------------------------------
# Targets.


def decode_panoptic(label, num_segments: int, ignore_index: int = 255):
  """Panoptic label maps [B, H, W] -> (masks [B, T, H, W] float32, classes [B, T]
  int32, valid [B, T] bool, semantic map [B, H, W] (ignore_index kept))."""
  label = label.astype(jnp.int32)
  known = label != ignore_index
  semantic = jnp.where(known, label % PANOPTIC_STRIDE, ignore_index)
  instance = jnp.where(known, label // PANOPTIC_STRIDE, -1)
  masks = instance[:, None] == jnp.arange(num_segments)[None, :, None, None]
  classes = jnp.max(jnp.where(masks, semantic[:, None], 0), axis=(2, 3))
  valid = jnp.any(masks, axis=(2, 3))
  return masks.astype(jnp.float32), classes.astype(jnp.int32), valid, semantic


# ----------------------------------------------------------------------------
# Costs and losses (logits [B, Q, P] or [B, T, P] flattened over pixels).


def pairwise_focal(logits, targets, alpha: float = 0.25, gamma: float = 2.0):
  """[B, Q, P] x [B, T, P] -> [B, Q, T] sigmoid focal loss, mean over pixels."""
  prob = jax.nn.sigmoid(logits)
  pos = alpha * (1 - prob) ** gamma * jax.nn.softplus(-logits)
  neg = (1 - alpha) * prob ** gamma * jax.nn.softplus(logits)
  return (jnp.einsum("bqp,btp->bqt", pos, targets) +
          jnp.einsum("bqp,btp->bqt", neg, 1 - targets)) / logits.shape[-1]


def pairwise_dice(logits, targets):
  """[B, Q, P] x [B, T, P] -> [B, Q, T] dice loss 1 - (2|x y| + 1) / (|x| + |y| + 1)."""
  prob = jax.nn.sigmoid(logits)
  num = 2 * jnp.einsum("bqp,btp->bqt", prob, targets)
  den = prob.sum(-1)[:, :, None] + targets.sum(-1)[:, None, :]
  return 1 - (num + 1) / (den + 1)


def focal_loss(logits, targets, alpha: float = 0.25, gamma: float = 2.0):
  """Elementwise pairs [..., P] -> [...] sigmoid focal loss, mean over pixels."""
  prob = jax.nn.sigmoid(logits)
  ce = jax.nn.softplus(logits) - logits * targets
  p_t = prob * targets + (1 - prob) * (1 - targets)
  a_t = alpha * targets + (1 - alpha) * (1 - targets)
  return jnp.mean(a_t * ce * (1 - p_t) ** gamma, axis=-1)


def dice_loss(logits, targets):
  """Elementwise pairs [..., P] -> [...] dice loss."""
  prob = jax.nn.sigmoid(logits)
  return 1 - (2 * (prob * targets).sum(-1) + 1) / (prob.sum(-1) + targets.sum(-1) + 1)


def set_loss(class_logits, mask_logits, masks, classes, valid, *, no_object_weight=0.1,
             class_weight=1.0, mask_weight=20.0, dice_weight=1.0):
  """MaskFormer's matched loss of one prediction set -> (total, parts dict).

  class_logits [B, Q, C + 1], mask_logits [B, Q, h, w]; targets masks
  [B, T, H, W] (0 / 1), classes [B, T], valid [B, T].
  """
  from vitjax.tasks.matching import match  # pylint: disable=g-import-not-at-top
  b, q, h, w = mask_logits.shape
  big_h, big_w = masks.shape[2:]
  c = class_logits.shape[-1] - 1
  class_logits = class_logits.astype(jnp.float32)
  mask_logits = mask_logits.astype(jnp.float32)
  validf = valid.astype(jnp.float32)

  # Matching cost on the prediction's grid.
  small = resize_nearest_torch(masks, h, w, axes=(2, 3)).reshape(b, -1, h * w)
  flat = mask_logits.reshape(b, q, h * w)
  prob = jax.nn.softmax(class_logits, -1)
  cost_class = -jnp.take_along_axis(prob, jnp.broadcast_to(classes[:, None], (b, q) +
                                                           classes.shape[1:]), axis=2)
  cost = (class_weight * cost_class + mask_weight * pairwise_focal(flat, small)
          + dice_weight * pairwise_dice(flat, small))
  query_index = match(cost, valid)  # [B, T]

  # Mask losses on matched pairs at the label's resolution.
  num_masks = jnp.maximum(validf.sum(), 1.0)
  pred = jnp.take_along_axis(mask_logits, query_index[:, :, None, None], axis=1)  # [B, T, h, w]
  if (h, w) != (big_h, big_w):
    pred = jax.image.resize(pred, (b, pred.shape[1], big_h, big_w), "bilinear",
                            antialias=False)
  pred = pred.reshape(b, -1, big_h * big_w)
  tgt = masks.reshape(b, -1, big_h * big_w)
  loss_mask = jnp.sum(focal_loss(pred, tgt) * validf) / num_masks
  loss_dice = jnp.sum(dice_loss(pred, tgt) * validf) / num_masks

  # Classification over all queries: unmatched ones are "no object" (class C).
  hit = jax.nn.one_hot(query_index, q, dtype=jnp.float32) * validf[..., None]  # [B, T, Q]
  matched = hit.sum(1) > 0
  target = jnp.where(matched, jnp.einsum("btq,bt->bq", hit, classes.astype(jnp.float32)),
                     c).astype(jnp.int32)
  weight = jnp.where(target == c, no_object_weight, 1.0)
  nll = -jnp.take_along_axis(jax.nn.log_softmax(class_logits, -1), target[..., None], -1)[..., 0]
  loss_ce = jnp.sum(weight * nll) / jnp.sum(weight)
  total = class_weight * loss_ce + mask_weight * loss_mask + dice_weight * loss_dice
  return total, {"loss_ce": loss_ce, "loss_mask": loss_mask, "loss_dice": loss_dice}


def mask_classification_loss(class_logits, out, masks, classes, valid, **weights):
  """set_loss of the final prediction plus every auxiliary one."""
  total, parts = set_loss(class_logits, out["masks"], masks, classes, valid, **weights)
  for aux in out.get("aux") or ():
    t, _ = set_loss(aux["logits"], aux["masks"], masks, classes, valid, **weights)
    total = total + t
  return total, parts


# ----------------------------------------------------------------------------
# Inference.


def semantic_inference(class_logits, mask_logits):
  """[B, Q, C + 1], [B, Q, H, W] -> per-pixel class scores [B, H, W, C]."""
  prob = jax.nn.softmax(class_logits.astype(jnp.float32), -1)[..., :-1]
  return jnp.einsum("bqc,bqhw->bhwc", prob, jax.nn.sigmoid(mask_logits.astype(jnp.float32)))


def panoptic_inference(class_logits, mask_logits, stuff_classes=(0,),
                       object_threshold: float = 0.8, overlap_threshold: float = 0.8):
  """-> (segment map [B, H, W] int32, segment classes [B, S] int32), S = Q + C.

  Segment q < Q is query q's thing segment; segment Q + c the merged stuff
  segment of class c; -1 marks pixels of no segment.
  """
  b, q = class_logits.shape[:2]
  c = class_logits.shape[-1] - 1
  prob = jax.nn.softmax(class_logits.astype(jnp.float32), -1)
  label = jnp.argmax(prob, -1)
  score = jnp.max(prob, -1)
  keep = (label != c) & (score > object_threshold)
  mprob = jax.nn.sigmoid(mask_logits.astype(jnp.float32))
  weighted = jnp.where(keep[:, :, None, None], score[:, :, None, None] * mprob, -1.0)
  assign = jnp.argmax(weighted, axis=1)  # [B, H, W]
  onehot = jax.nn.one_hot(assign, q, dtype=jnp.float32) * keep[:, None, None, :]
  area = onehot.sum((1, 2))
  own = jnp.sum((mprob >= 0.5) & keep[:, :, None, None], axis=(2, 3)).astype(jnp.float32)
  ok = keep & (area > 0) & (own > 0) & (area > overlap_threshold * jnp.maximum(own, 1e-9))
  is_stuff = jnp.isin(label, jnp.asarray(stuff_classes, jnp.int32))
  seg_of_query = jnp.where(is_stuff, q + label, jnp.arange(q)[None])
  seg_of_query = jnp.where(ok, seg_of_query, -1)
  seg = jnp.take_along_axis(seg_of_query, assign.reshape(b, -1), axis=1).reshape(assign.shape)
  seg_classes = jnp.concatenate([label, jnp.broadcast_to(jnp.arange(c), (b, c))], 1)
  return seg.astype(jnp.int32), seg_classes.astype(jnp.int32)


def pq_stats(seg, seg_classes, masks, classes, valid, known, num_classes: int):
  """Per-class sums for PQ: dict of tp, fp, fn, iou [C] (float32).

  seg [B, H, W] (-1 void), seg_classes [B, S]; true masks [B, T, H, W],
  classes / valid [B, T]; known [B, H, W]: pixels that count (not ignored).
  """
  s = seg_classes.shape[1]
  pred = jax.nn.one_hot(seg, s, dtype=jnp.float32) * known[..., None]  # [B, H, W, S]
  true = masks * known[:, None]
  inter = jnp.einsum("bhws,bthw->bst", pred, true)
  area_p, area_t = pred.sum((1, 2)), true.sum((2, 3))
  union = area_p[:, :, None] + area_t[:, None, :] - inter
  iou = inter / jnp.maximum(union, 1e-9)
  same = seg_classes[:, :, None] == classes[:, None, :]
  hit = (iou > 0.5) & same & valid[:, None, :] & (area_p[:, :, None] > 0)
  hitf = hit.astype(jnp.float32)
  cls_t = jax.nn.one_hot(classes, num_classes) * valid[..., None]  # [B, T, C]
  cls_p = jax.nn.one_hot(seg_classes, num_classes) * (area_p > 0)[..., None]  # [B, S, C]
  tp_t = hitf.sum(1)  # [B, T] matched true segments
  tp_p = hitf.sum(2)  # [B, S] matched predicted segments
  return {
      "tp": jnp.einsum("bt,btc->c", tp_t, cls_t),
      "fn": jnp.einsum("bt,btc->c", 1 - tp_t, cls_t),
      "fp": jnp.einsum("bs,bsc->c", 1 - tp_p, cls_p),
      "iou": jnp.einsum("bst,btc->c", iou * hitf, cls_t),
  }


def panoptic_quality(tp, fp, fn, iou, class_names=None, stuff_classes=(0,)) -> dict:
  """PQ / SQ / RQ (means over classes that occur) from per-class sums."""
  tp, fp, fn, iou = (np.asarray(a, np.float64) for a in (tp, fp, fn, iou))
  denom = tp + 0.5 * fp + 0.5 * fn
  present = denom > 0
  pq = np.where(present, iou / np.maximum(denom, 1e-12), 0.0)
  sq = np.where(tp > 0, iou / np.maximum(tp, 1e-12), 0.0)
  rq = np.where(present, tp / np.maximum(denom, 1e-12), 0.0)
  mean = lambda a, m: float(a[m].mean()) if m.any() else 0.0
  stuff = np.isin(np.arange(len(tp)), stuff_classes)
  out = {"pq": mean(pq, present), "sq": mean(sq, present), "rq": mean(rq, present),
         "pq_things": mean(pq, present & ~stuff), "pq_stuff": mean(pq, present & stuff)}
  names = class_names or [str(i) for i in range(len(tp))]
  out.update({f"pq/{names[c]}": float(pq[c]) for c in range(len(tp)) if present[c]})
  return out


def _upsample(x, height, width):
  b, q = x.shape[:2]
  if x.shape[2:] == (height, width):
    return x
  return jax.image.resize(x, (b, q, height, width), "bilinear", antialias=False)


# ----------------------------------------------------------------------------
# The task.


@register_task("mask_classification")
class MaskClassificationTask(Task):
  """Images -> (class, mask) pairs; trained with the matched set loss."""

  kwargs = dict(ignore_index=255, no_object_weight=0.1, object_threshold=0.8,
                overlap_threshold=0.8)
  data_kwargs = DENSE_DATA_KWARGS
  data_source = "vitjax.data.dense"

  def __init__(self, config, info, model):
    super().__init__(config, info, model)
    self.num_classes = info.num_classes
    kw = self.kw
    self.ignore_index = int(kw["ignore_index"])
    self.num_segments = int(kw.get("shapes_max_objects", 4)) + 1
    self.no_object_weight = float(kw["no_object_weight"])
    self.object_threshold = float(kw["object_threshold"])
    self.overlap_threshold = float(kw["overlap_threshold"])

  @classmethod
  def source_config(cls, config):
    """The shapes set with panoptic labels (class + 16 * instance id per pixel)."""
    if config.dataset.name != "shapes":
      raise UserError(f"task 'mask_classification' reads the embedded shapes set "
                      f"(config.dataset.name='shapes'), got {config.dataset.name!r}.")
    config = copy.deepcopy(config)
    with config.unlocked() if hasattr(config, "unlocked") else contextlib.nullcontext():
      config.task_kwargs.shapes_labels = "panoptic"
    return config

  def train_loss(self, params, model_state, batch, rng, *, consts=None, task_state=None,
                 step=None):
    del consts, task_state, step
    masks, classes, valid, _ = decode_panoptic(batch["label"], self.num_segments,
                                               self.ignore_index)
    logits, out, new_state = apply_model(self.model, params, model_state, batch["image"],
                                         train=True, rng=rng)
    loss, parts = mask_classification_loss(logits, out, masks, classes, valid,
                                           no_object_weight=self.no_object_weight)
    return loss, (parts, new_state, None)

  def eval_sums(self, params, model_state, batch):
    label = jnp.where(batch["mask"][:, None, None], batch["label"], self.ignore_index)
    masks, classes, valid, semantic = decode_panoptic(label, self.num_segments,
                                                      self.ignore_index)
    logits, out, _ = apply_model(self.model, params, model_state, batch["image"], train=False)
    mask_logits = _upsample(out["masks"], *label.shape[1:3])
    pred = jnp.argmax(semantic_inference(logits, mask_logits), -1)
    seg, seg_classes = panoptic_inference(logits, mask_logits, (0,), self.object_threshold,
                                          self.overlap_threshold)
    stats = pq_stats(seg, seg_classes, masks, classes, valid, semantic != self.ignore_index,
                     self.num_classes)
    return {
        "count": jnp.sum(batch["mask"]).astype(jnp.float32),
        "confusion": confusion_matrix(semantic, pred, self.num_classes, self.ignore_index),
        **{f"pq_{k}": v for k, v in stats.items()},
    }

  def eval_summary(self, sums):
    names = list(self.info.class_names)
    out = segmentation_metrics(sums["confusion"], names)
    out.update(panoptic_quality(sums["pq_tp"], sums["pq_fp"], sums["pq_fn"], sums["pq_iou"],
                                names))
    return out

