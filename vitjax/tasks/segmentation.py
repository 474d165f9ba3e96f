"""Semantic segmentation: per-pixel softmax cross-entropy; mIoU and pixel accuracy.

The model returns logits at any resolution (SegFormer: 1/4 of the input);
they are upsampled bilinearly to the label map's size before the loss and
the argmax, as in the SegFormer paper. Pixels labelled `ignore_index` (255;
config.task_kwargs.ignore_index) count in neither the loss nor the metrics.

Evaluation runs on the original label maps (the mmseg / HF protocol):
vitjax.data.dense_eval resizes each image by config.task_kwargs.eval_resize
('square' by default, or keeping the aspect ratio) and pads it to a static
canvas; vitjax.tasks.seg_inference turns the logits ('whole' image or
'slide' windows: eval_inference, eval_crop, eval_stride) into logits at
the label map's own size, where the metrics are computed.

Evaluation accumulates a [C, C] confusion matrix (rows: true class, columns:
prediction) in `eval_sums`; `eval_summary` reports
  miou            mean over classes present in labels or predictions of
                  IoU_c = TP_c / (TP_c + FP_c + FN_c),
  pixel_accuracy  sum TP / labelled pixels,
  iou/<class>     every class's IoU (NaN-free: a class absent from both is left out),
  loss            mean per-pixel cross-entropy.
Data: vitjax.data.dense (train batches, dataset info), vitjax.data.dense_eval (eval).
"""

import jax
import jax.numpy as jnp
import numpy as np

from vitjax.data import dense_eval
from vitjax.tasks import seg_inference
from vitjax.tasks.base import Task, apply_model, register_task


def upsample_logits(logits, height: int, width: int):
  """[B, h, w, C] -> [B, height, width, C], bilinear (half-pixel centres)."""
  b, h, w, c = logits.shape
  if (h, w) == (height, width):
    return logits
  return jax.image.resize(logits, (b, height, width, c), "bilinear", antialias=False)


def pixel_cross_entropy(logits, labels, ignore_index: int):
  """(sum of per-pixel CE over labelled pixels, number of labelled pixels)."""
  valid = labels != ignore_index
  safe = jnp.where(valid, labels, 0)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
  return jnp.sum(nll * valid), jnp.sum(valid)


def confusion_matrix(labels, predictions, num_classes: int, ignore_index: int, weights=None):
  """[C, C] float32 counts (row: label, column: prediction) of labelled pixels."""
  valid = (labels != ignore_index) & (labels >= 0) & (labels < num_classes)
  if weights is not None:
    valid = valid & weights
  index = jnp.where(valid, labels * num_classes + predictions, 0)
  counts = jnp.zeros(num_classes * num_classes, jnp.float32).at[index.ravel()].add(
      valid.ravel().astype(jnp.float32))
  return counts.reshape(num_classes, num_classes)


def segmentation_metrics(confusion, class_names=None) -> dict:
  """mIoU, pixel accuracy and per-class IoU from a [C, C] confusion matrix."""
  cm = np.asarray(confusion, np.float64)
  tp = np.diag(cm)
  union = cm.sum(0) + cm.sum(1) - tp
  present = union > 0
  iou = np.where(present, tp / np.maximum(union, 1), 0.0)
  names = class_names or [str(i) for i in range(len(tp))]
  out = {"miou": float(iou[present].mean()) if present.any() else 0.0,
         "pixel_accuracy": float(tp.sum() / max(cm.sum(), 1))}
  out.update({f"iou/{names[c]}": float(iou[c]) for c in range(len(tp)) if present[c]})
  return out


# Settings vitjax.data.dense reads from config.task_kwargs (its docstring has them).
DENSE_DATA_KWARGS = ("num_classes", "image_key", "mask_key", "num_train_images",
                     "num_eval_images", "shapes_image_size", "shapes_max_objects",
                     "shapes_size_range", "shapes_labels", "scale_range", "color_jitter",
                     "reduce_zero_label", "bad_labels")


@register_task("segmentation")
class SegmentationTask(Task):
  """Images -> a class per pixel."""

  kwargs = {"ignore_index": 255, **dense_eval.EVAL_DEFAULTS}
  data_kwargs = DENSE_DATA_KWARGS
  data_source = "vitjax.data.dense"

  def __init__(self, config, info, model):
    super().__init__(config, info, model)
    self.num_classes = info.num_classes
    self.ignore_index = int(self.kw["ignore_index"])
    self.protocol = dense_eval.protocol(config)

  @classmethod
  def check_config(cls, config):
    super().check_config(config)
    dense_eval.protocol(config)

  def eval_iterator(self, config, *, process_index: int = 0, process_count: int = 1):
    """The eval split at the original label sizes (vitjax.data.dense_eval)."""
    return dense_eval.eval_iterator(self.source_config(config), process_index=process_index,
                                    process_count=process_count)

  def _logits(self, params, model_state, images, labels, *, train, rng=None):
    logits, _, new_state = apply_model(self.model, params, model_state, images, train=train,
                                       rng=rng)
    return upsample_logits(logits, *labels.shape[1:3]), new_state

  def train_loss(self, params, model_state, batch, rng, *, consts=None, task_state=None,
                 step=None):
    del consts, task_state, step
    labels = batch["label"]
    logits, new_state = self._logits(params, model_state, batch["image"], labels, train=True,
                                     rng=rng)
    total, count = pixel_cross_entropy(logits, labels, self.ignore_index)
    loss = total / jnp.maximum(count, 1)
    valid = labels != self.ignore_index
    acc = jnp.sum((jnp.argmax(logits, -1) == labels) & valid) / jnp.maximum(jnp.sum(valid), 1)
    return loss, ({"pixel_accuracy": acc}, new_state, None)

  def eval_logits(self, params, model_state, batch):
    """Logits [B, Lh, Lw, C] at the original label sizes (a dense_eval batch)."""
    apply = lambda x: apply_model(self.model, params, model_state, x, train=False)[0]
    return seg_inference.infer(apply, batch, self.protocol)

  def eval_sums(self, params, model_state, batch):
    labels = batch["label"]
    if "label_size" in batch:  # dense_eval's batches
      logits = self.eval_logits(params, model_state, batch)
    else:  # square batches (vitjax.data.dense.eval_iterator)
      logits, _ = self._logits(params, model_state, batch["image"], labels, train=False)
    rows = batch["mask"][:, None, None]
    labels = jnp.where(rows, labels, self.ignore_index)
    total, count = pixel_cross_entropy(logits, labels, self.ignore_index)
    return {
        "count": count.astype(jnp.float32),
        "loss": total,
        "confusion": confusion_matrix(labels, jnp.argmax(logits, -1), self.num_classes,
                                      self.ignore_index),
    }

  def eval_summary(self, sums):
    out = segmentation_metrics(sums["confusion"], list(self.info.class_names))
    out["loss"] = sums["loss"] / max(sums["count"], 1.0)
    return out
