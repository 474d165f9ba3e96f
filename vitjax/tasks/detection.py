"""Object detection as set prediction: DETR's Hungarian-matched set loss; COCO box mAP.

Model interface (DETR, Deformable DETR, Conditional DETR share it):
  model(images, train=...) -> (logits, out) with
    logits        [B, Q, C + 1] (softmax, last = no object) or [B, Q, C] (sigmoid focal),
    out["boxes"]  [B, Q, 4] (cx, cy, w, h) in [0, 1], already sigmoided,
    out["aux"]    list of {"logits", "boxes"} of the intermediate decoder layers
                  (empty without auxiliary losses),
    out["enc_outputs"]  optional {"logits", "boxes"} (two-stage Deformable DETR;
                  matched class-agnostically, every target labelled class 0, as in
                  Deformable DETR's code).

Batches (vitjax.data.detection): image [B, S, S, 3], boxes [B, T, 4] (cx, cy, w, h
normalised), labels [B, T] int32 in 0..C-1, box_valid [B, T] bool; eval batches
add mask [B] and orig_size [B, 2] (h, w in pixels, for COCO's area ranges).
With task_kwargs.resize='detr' images are padded to a canvas and the batch
holds pixel_mask [B, H, W], passed to the model as `pixel_mask=`; boxes are
relative to each image (not the canvas).

Loss (Carion et al. 2020, Sec. 3.1; Zhu et al. 2021 for the focal variant), per
decoder layer, on the matching of `vitjax.tasks.matching` (host Hungarian):
  matching cost  class_cost * cost_class + bbox_cost * L1 + giou_cost * (-GIoU),
                 cost_class = -p(target class) (softmax) or the focal cost
                 alpha (1-p)^g (-log p) - (1-alpha) p^g (-log(1-p)) (sigmoid);
  loss_ce        softmax: cross-entropy over C + 1 with weight eos_coef on the
                 no-object class (weighted mean); sigmoid: focal loss
                 (alpha 0.25, gamma 2) summed and divided by the number of boxes;
  loss_bbox      L1 of matched boxes / number of target boxes (>= 1);
  loss_giou      (1 - GIoU) of matched boxes / number of target boxes;
  total = sum over layers (final, aux_i, enc) of ce_coef * loss_ce +
          bbox_coef * loss_bbox + giou_coef * loss_giou.
An image without objects only has its no-object term (never a NaN).

config.task_kwargs (all optional): class_loss ('softmax_ce' | 'sigmoid_focal'),
class_cost 1, bbox_cost 5, giou_cost 2, ce_loss_coef 1, bbox_loss_coef 5,
giou_loss_coef 2, eos_coef 0.1, focal_alpha 0.25, focal_gamma 2,
max_detections (100), plus the data settings of vitjax.data.detection.

Evaluation: loss sums in `eval_sums`; per-image detections (`eval_outputs`)
gathered by the trainer and scored by pycocotools (`eval_summary_from_outputs`):
AP, AP50, AP75, AP_small / medium / large, on each image's original pixels
(boxes times its orig_size; clipped to the image under resize='square', left
as predicted under 'detr', as DETR's PostProcess and HF's post-processing).
"""

import contextlib
import io

import jax
import jax.numpy as jnp
import numpy as np

from vitjax.errors import UserError
from vitjax.tasks import matching
from vitjax.tasks.base import Task, apply_model, register_task
from vitjax.tasks.segmentation import DENSE_DATA_KWARGS

CLASS_LOSSES = ("softmax_ce", "sigmoid_focal")
_PAD_BOX = (0.5, 0.5, 1.0, 1.0)  # stands in for padded target slots (never NaN)


# ----------------------------------------------------------------------------
# Boxes.


def cxcywh_to_xyxy(b):
  cx, cy, w, h = jnp.moveaxis(b, -1, 0)
  return jnp.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


def _area(b):
  return (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])


def generalized_iou(a, b):
  """GIoU of xyxy boxes a [..., N, 4] and b [..., M, 4] -> [..., N, M]."""
  a, b = a[..., :, None, :], b[..., None, :, :]
  lt = jnp.maximum(a[..., :2], b[..., :2])
  rb = jnp.minimum(a[..., 2:], b[..., 2:])
  inter = jnp.prod(jnp.clip(rb - lt, 0), -1)
  union = _area(a) + _area(b) - inter
  iou = inter / jnp.maximum(union, 1e-12)
  hull = jnp.prod(jnp.clip(jnp.maximum(a[..., 2:], b[..., 2:]) -
                           jnp.minimum(a[..., :2], b[..., :2]), 0), -1)
  return iou - (hull - union) / jnp.maximum(hull, 1e-12)


# ----------------------------------------------------------------------------
# The set loss.


def _focal_cost_terms(logits, alpha, gamma):
  p = jax.nn.sigmoid(logits)
  neg = (1 - alpha) * p ** gamma * -jnp.log(1 - p + 1e-8)
  pos = alpha * (1 - p) ** gamma * -jnp.log(p + 1e-8)
  return pos - neg


def matching_cost(logits, boxes, labels, tgt_boxes, opts):
  """[B, Q, T] DETR matching cost."""
  if opts["class_loss"] == "softmax_ce":
    cls = -jax.nn.softmax(logits, -1)
  else:
    cls = _focal_cost_terms(logits, opts["focal_alpha"], opts["focal_gamma"])
  cost_class = jnp.take_along_axis(cls, labels[:, None, :], axis=-1)  # [B, Q, T]
  cost_bbox = jnp.sum(jnp.abs(boxes[:, :, None] - tgt_boxes[:, None]), -1)
  cost_giou = -generalized_iou(cxcywh_to_xyxy(boxes), cxcywh_to_xyxy(tgt_boxes))
  return (opts["bbox_cost"] * cost_bbox + opts["class_cost"] * cost_class +
          opts["giou_cost"] * cost_giou)


def sigmoid_focal_loss(logits, targets, alpha, gamma):
  """Element-wise focal loss (Lin et al. 2017) of sigmoid logits vs 0/1 targets."""
  p = jax.nn.sigmoid(logits)
  ce = jnp.maximum(logits, 0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))
  p_t = p * targets + (1 - p) * (1 - targets)
  alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
  return alpha_t * ce * (1 - p_t) ** gamma


def layer_losses(logits, boxes, labels, tgt_boxes, valid, num_boxes, opts):
  """{loss_ce, loss_bbox, loss_giou} of one decoder layer's predictions."""
  logits = logits.astype(jnp.float32)
  boxes = boxes.astype(jnp.float32)
  b, q = logits.shape[:2]
  query = matching.match(matching_cost(logits, boxes, labels, tgt_boxes, opts), valid)
  # Boxes: every valid target against the query matched to it.
  matched = jnp.take_along_axis(boxes, query[..., None], axis=1)  # [B, T, 4]
  w = valid.astype(jnp.float32)
  l1 = jnp.sum(jnp.abs(matched - tgt_boxes), -1)
  giou = jnp.diagonal(generalized_iou(cxcywh_to_xyxy(matched), cxcywh_to_xyxy(tgt_boxes)),
                      axis1=-2, axis2=-1)
  out = {"loss_bbox": jnp.sum(l1 * w) / num_boxes,
         "loss_giou": jnp.sum((1 - giou) * w) / num_boxes}
  # Classes: a query takes its matched target's class, else "no object".
  hits = jax.nn.one_hot(query, q, dtype=jnp.float32) * w[..., None]  # [B, T, Q]
  is_matched = jnp.sum(hits, 1) > 0
  num_classes = logits.shape[-1] - (1 if opts["class_loss"] == "softmax_ce" else 0)
  target = jnp.where(is_matched, jnp.einsum("btq,bt->bq", hits, labels.astype(jnp.float32)),
                     num_classes).astype(jnp.int32)  # [B, Q]
  if opts["class_loss"] == "softmax_ce":
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits, -1), target[..., None], -1)[..., 0]
    weight = jnp.where(target == num_classes, opts["eos_coef"], 1.0)
    out["loss_ce"] = jnp.sum(weight * nll) / jnp.sum(weight)
  else:
    onehot = jax.nn.one_hot(target, num_classes + 1, dtype=jnp.float32)[..., :num_classes]
    out["loss_ce"] = jnp.sum(sigmoid_focal_loss(
        logits, onehot, opts["focal_alpha"], opts["focal_gamma"])) / num_boxes
  return out


def set_loss(logits, out, labels, tgt_boxes, valid, opts):
  """Total DETR loss and its named components (final layer, aux_i, enc)."""
  valid = valid.astype(bool)
  tgt_boxes = jnp.where(valid[..., None], tgt_boxes.astype(jnp.float32),
                        jnp.asarray(_PAD_BOX, jnp.float32))
  labels = jnp.where(valid, labels, 0).astype(jnp.int32)
  num_boxes = jnp.maximum(jnp.sum(valid).astype(jnp.float32), 1.0)
  layers = [("", logits, out["boxes"], labels)]
  for i, aux in enumerate(out.get("aux") or []):
    layers.append((f"_{i}", aux["logits"], aux["boxes"], labels))
  if out.get("enc_outputs") is not None:
    enc = out["enc_outputs"]
    layers.append(("_enc", enc["logits"], enc["boxes"], jnp.zeros_like(labels)))
  parts, total = {}, 0.0
  coef = {"loss_ce": opts["ce_loss_coef"], "loss_bbox": opts["bbox_loss_coef"],
          "loss_giou": opts["giou_loss_coef"]}
  for suffix, lg, bx, lb in layers:
    for k, v in layer_losses(lg, bx, lb, tgt_boxes, valid, num_boxes, opts).items():
      parts[k + suffix] = v
      total = total + coef[k] * v
  return total, parts


LOSS_DEFAULTS = dict(class_loss="softmax_ce", class_cost=1.0, bbox_cost=5.0, giou_cost=2.0,
                     ce_loss_coef=1.0, bbox_loss_coef=5.0, giou_loss_coef=2.0, eos_coef=0.1,
                     focal_alpha=0.25, focal_gamma=2.0, max_detections=100)


def loss_options(config) -> dict:
  """The set loss's settings: LOSS_DEFAULTS updated by config.task_kwargs."""
  kw = config.get("task_kwargs") or {}
  get = kw.get if hasattr(kw, "get") else (lambda k, d: d)
  opts = {k: type(v)(get(k, v)) for k, v in LOSS_DEFAULTS.items()}
  if opts["class_loss"] not in CLASS_LOSSES:
    raise UserError(f"config.task_kwargs.class_loss={opts['class_loss']!r}; use one of "
                    f"{CLASS_LOSSES} (DETR: softmax_ce; Deformable DETR: sigmoid_focal).")
  if not 0 < opts["eos_coef"] <= 1:
    raise UserError(f"config.task_kwargs.eos_coef={opts['eos_coef']} must be in (0, 1] "
                    "(DETR: 0.1).")
  return opts


# ----------------------------------------------------------------------------
# Inference and COCO evaluation.


def postprocess(logits, boxes, class_loss: str, k: int):
  """Top-k detections per image: (scores [B, k], classes [B, k], boxes xyxy [B, k, 4])."""
  b, q, c = logits.shape
  if class_loss == "softmax_ce":  # DETR: the best real class of every query
    prob = jax.nn.softmax(logits.astype(jnp.float32), -1)[..., :-1]
    scores, classes = jnp.max(prob, -1), jnp.argmax(prob, -1)
    k = min(k, q)
    scores, idx = jax.lax.top_k(scores, k)
    classes = jnp.take_along_axis(classes, idx, 1)
  else:  # Deformable DETR: top-k over all (query, class) pairs
    prob = jax.nn.sigmoid(logits.astype(jnp.float32)).reshape(b, q * c)
    k = min(k, q * c)
    scores, flat = jax.lax.top_k(prob, k)
    idx, classes = flat // c, flat % c
  picked = jnp.take_along_axis(boxes, idx[..., None], 1)
  return scores, classes.astype(jnp.int32), cxcywh_to_xyxy(picked.astype(jnp.float32))


def coco_map(detections, ground_truth, class_names) -> dict:
  """COCO box AP via pycocotools.

  detections: per image a dict scores [k], classes [k] (0-based), boxes [k, 4]
  (xyxy pixels); ground_truth: per image a dict classes [n], boxes [n, 4] (xyxy
  pixels), height, width. Returns ap, ap50, ap75, ap_small, ap_medium, ap_large
  (-1 where COCO has nothing to score, e.g. no large objects).
  """
  from pycocotools.coco import COCO  # pylint: disable=g-import-not-at-top
  from pycocotools.cocoeval import COCOeval  # pylint: disable=g-import-not-at-top
  images, anns, dets = [], [], []
  for i, (det, gt) in enumerate(zip(detections, ground_truth)):
    images.append(dict(id=i + 1, height=int(gt["height"]), width=int(gt["width"])))
    for c, bx in zip(gt["classes"], gt["boxes"]):
      x0, y0, x1, y1 = (float(v) for v in bx)
      anns.append(dict(id=len(anns) + 1, image_id=i + 1, category_id=int(c) + 1,
                       bbox=[x0, y0, x1 - x0, y1 - y0], area=(x1 - x0) * (y1 - y0),
                       iscrowd=0))
    for s, c, bx in zip(det["scores"], det["classes"], det["boxes"]):
      x0, y0, x1, y1 = (float(v) for v in bx)
      dets.append(dict(image_id=i + 1, category_id=int(c) + 1,
                       bbox=[x0, y0, x1 - x0, y1 - y0], score=float(s)))
  names = ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")
  if not anns or not dets:
    return {n: 0.0 for n in names}
  with contextlib.redirect_stdout(io.StringIO()):
    gt = COCO()
    gt.dataset = dict(images=images, annotations=anns,
                      categories=[dict(id=i + 1, name=n) for i, n in enumerate(class_names)])
    gt.createIndex()
    dt = gt.loadRes(dets)
    ev = COCOeval(gt, dt, "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
  return {n: float(v) for n, v in zip(names, ev.stats[:6])}


# ----------------------------------------------------------------------------
# The task.


def _mask_kwargs(batch):
  """{'pixel_mask': ...} for padded batches (task_kwargs.resize='detr'), else {}."""
  return {"pixel_mask": batch["pixel_mask"]} if "pixel_mask" in batch else {}


@register_task("detection")
class DetectionTask(Task):
  """Images -> a set of (class, box) predictions."""

  kwargs = LOSS_DEFAULTS
  data_kwargs = ("max_boxes", "min_box_size", "resize", "min_size", "max_size", "canvas",
                 "train_sizes", "random_crop", "crop_sizes", "crop_range") + DENSE_DATA_KWARGS
  data_source = "vitjax.data.detection"

  def __init__(self, config, info, model):
    super().__init__(config, info, model)
    self.num_classes = info.num_classes
    self.opts = loss_options(config)
    # DETR's protocol keeps predictions unclipped (as DETR's PostProcess and HF);
    # the square protocol clips them to the image before scoring, as before.
    self.clip_boxes = dict(self.kw).get("resize", "square") != "detr"

  def _check_logits(self, logits):
    want = self.num_classes + (1 if self.opts["class_loss"] == "softmax_ce" else 0)
    if logits.shape[-1] != want:
      raise UserError(
          f"class_loss={self.opts['class_loss']!r} needs logits with {want} classes "
          f"({self.num_classes} classes{' + no-object' if want > self.num_classes else ''}), "
          f"the model gives {logits.shape[-1]}; set config.task_kwargs.class_loss to "
          "'softmax_ce' for DETR or 'sigmoid_focal' for Deformable DETR.")

  def _loss(self, params, model_state, batch, *, train, rng=None):
    logits, out, new_state = apply_model(self.model, params, model_state, batch["image"],
                                         train=train, rng=rng, **_mask_kwargs(batch))
    self._check_logits(logits)
    total, parts = set_loss(logits, out, batch["labels"], batch["boxes"], batch["box_valid"],
                            self.opts)
    return total, parts, (logits, out), new_state

  def train_loss(self, params, model_state, batch, rng, *, consts=None, task_state=None,
                 step=None):
    del consts, task_state, step
    total, parts, _, new_state = self._loss(params, model_state, batch, train=True, rng=rng)
    metrics = {k: parts[k] for k in ("loss_ce", "loss_bbox", "loss_giou")}
    return total, (metrics, new_state, None)

  def eval_sums(self, params, model_state, batch):
    # Padding rows have no valid boxes; their loss is dropped by the mask weight
    # of the whole batch (one loss per batch, weighted by its real rows).
    mask = batch["mask"]
    valid = batch["box_valid"] & mask[:, None]
    total, _, _, _ = self._loss(params, model_state, dict(batch, box_valid=valid),
                                train=False)
    n = jnp.sum(mask).astype(jnp.float32)
    return {"count": n, "loss": total * n}

  def eval_outputs(self, params, model_state, batch):
    """Per-image detections and ground truth (host side: COCO mAP)."""
    logits, out, _ = apply_model(self.model, params, model_state, batch["image"], train=False,
                                 **_mask_kwargs(batch))
    scores, classes, boxes = postprocess(logits, out["boxes"], self.opts["class_loss"],
                                         self.opts["max_detections"])
    return dict(scores=scores, classes=classes, boxes=boxes, mask=batch["mask"],
                gt_boxes=cxcywh_to_xyxy(batch["boxes"]), gt_labels=batch["labels"],
                gt_valid=batch["box_valid"], orig_size=batch["orig_size"])

  def eval_summary(self, sums):
    return {"loss": sums["loss"] / max(sums["count"], 1.0)}

  def image_results(self, outputs):
    """Per real image of `eval_outputs` batches: (detections, ground truth) in
    the original image's pixels (xyxy), as `coco_map` takes them."""
    dets, gts = [], []
    for o in outputs:
      for i in np.nonzero(np.asarray(o["mask"]))[0]:
        h, w = (float(v) for v in o["orig_size"][i])
        scale = np.array([w, h, w, h], np.float32)
        boxes = np.asarray(o["boxes"][i], np.float32)
        dets.append(dict(scores=o["scores"][i], classes=o["classes"][i],
                         boxes=(np.clip(boxes, 0, 1) if self.clip_boxes else boxes) * scale))
        v = np.asarray(o["gt_valid"][i], bool)
        gts.append(dict(classes=o["gt_labels"][i][v], boxes=o["gt_boxes"][i][v] * scale,
                        height=h, width=w))
    return dets, gts

  def eval_summary_from_outputs(self, outputs):
    return coco_map(*self.image_results(outputs), list(self.info.class_names))
