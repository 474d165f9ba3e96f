"""Multi-label classification: a sigmoid per class, binary cross-entropy; mAP,
micro / macro F1 at per-class thresholds chosen on a held-out split.

Loss: sum over classes of BCE(sigmoid(logit_c), y_c), mean over the batch
(y may be soft: label smoothing y (1 - e) + e / 2, Mixup / CutMix targets).

Evaluation reads two splits in one pass: first the threshold split
(config.task_kwargs.threshold_split, default config.dataset.train_split, with
eval preprocessing), then the eval split. Every batch adds, per split, class
and label (0 / 1), a histogram of the logits over NUM_BINS bins on
[-LOGIT_RANGE, LOGIT_RANGE] (clipped) to `eval_sums`, so no scores are kept.
`eval_summary` then
  - picks, per class, the bin edge whose "score >= edge" maximises F1 on the
    threshold split (ties: the lowest edge),
  - reports on the eval split: mAP (mean over classes with a positive of the
    average precision, i.e. sklearn's average_precision_score on the logits
    quantised to their bin), micro F1 and macro F1 at those thresholds (and
    at 0.5 probability, `*_at_0.5`), and the mean BCE loss.
Ties inside a bin are what sklearn calls tied scores, so these figures equal
sklearn's on the quantised scores (tests/test_multilabel.py checks).
Data: any source with a multi-hot `label` [num_classes] (DatasetInfo.multi_label):
'digits_multilabel', or a TFDS set with a Sequence(ClassLabel) (voc/2007).
"""

import jax.numpy as jnp
import numpy as np
import optax

from vitjax import data as data_lib
from vitjax.data import augment as augment_lib
from vitjax.errors import UserError
from vitjax.tasks import mixing
from vitjax.tasks.base import Task, apply_model, fold_rng, register_task

NUM_BINS = 4096
LOGIT_RANGE = 16.0
DEFAULTS = dict(threshold_split="")


def bce_loss(logits, targets):
  """Per-example sum over classes of sigmoid binary cross-entropy."""
  return jnp.sum(optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32),
                                                    targets.astype(jnp.float32)), -1)


def logit_bins(logits):
  """int32 bin index in [0, NUM_BINS) of every logit (higher logit, higher bin)."""
  x = (jnp.clip(logits.astype(jnp.float32), -LOGIT_RANGE, LOGIT_RANGE) + LOGIT_RANGE)
  return jnp.clip((x * (NUM_BINS / (2 * LOGIT_RANGE))).astype(jnp.int32), 0, NUM_BINS - 1)


def bin_edges():
  """The lower logit edge of every bin (bin 0: -inf)."""
  edges = np.arange(NUM_BINS) * (2 * LOGIT_RANGE / NUM_BINS) - LOGIT_RANGE
  edges[0] = -np.inf
  return edges


def score_histograms(bins, labels, weights, num_classes: int):
  """[num_classes, 2, NUM_BINS] float32 counts: [c, y, bin]."""
  c = jnp.broadcast_to(jnp.arange(num_classes), bins.shape)
  index = (c * 2 + labels.astype(jnp.int32)) * NUM_BINS + bins
  w = jnp.broadcast_to(weights[:, None], bins.shape).astype(jnp.float32)
  flat = jnp.zeros(num_classes * 2 * NUM_BINS, jnp.float32).at[index.ravel()].add(w.ravel())
  return flat.reshape(num_classes, 2, NUM_BINS)


# ----------------------------------------------------------------------------
# Metrics in numpy, from the histograms ([C, 2, NUM_BINS]: negatives, positives).


def _counts_at_or_above(hist):
  """(tp, fp) [C, NUM_BINS]: positives / negatives with bin >= b, for every b."""
  hist = np.asarray(hist, np.float64)
  above = np.cumsum(hist[..., ::-1], axis=-1)[..., ::-1]
  return above[:, 1], above[:, 0]


def average_precision(hist):
  """[C] AP (NaN where a class has no positive) from the histograms: sum over
  thresholds (distinct scores, high to low) of (R_n - R_{n-1}) P_n."""
  hist = np.asarray(hist, np.float64)
  tp, fp = _counts_at_or_above(hist)
  pos = hist[:, 1].sum(-1)
  ap = np.full(len(hist), np.nan)
  for c in range(len(hist)):
    if pos[c] == 0:
      continue
    nz = (hist[c].sum(0) > 0)[::-1]      # bins holding a score, high to low
    t, f = tp[c][::-1][nz], fp[c][::-1][nz]
    precision = t / np.maximum(t + f, 1e-12)
    recall = t / pos[c]
    ap[c] = np.sum(np.diff(np.concatenate([[0.0], recall])) * precision)
  return ap


def best_thresholds(hist):
  """[C] bin index b maximising F1 of 'bin >= b' per class (lowest on ties)."""
  tp, fp = _counts_at_or_above(hist)
  pos = hist[:, 1].sum(-1, keepdims=True)
  f1 = 2 * tp / np.maximum(tp + fp + pos, 1e-12)
  return np.argmax(f1, axis=-1)


def f1_at(hist, thresholds):
  """(micro F1, macro F1) of 'bin >= thresholds[c]' on the histograms."""
  tp, fp = _counts_at_or_above(hist)
  c = np.arange(len(hist))
  tp, fp = tp[c, thresholds], fp[c, thresholds]
  fn = hist[:, 1].sum(-1) - tp
  micro = 2 * tp.sum() / max(2 * tp.sum() + fp.sum() + fn.sum(), 1e-12)
  per_class = 2 * tp / np.maximum(2 * tp + fp + fn, 1e-12)
  return float(micro), float(per_class.mean())


@register_task("multilabel")
class MultiLabelTask(Task):
  """Images -> a set of classes (multi-hot labels)."""

  host_augment = True
  mixes_batches = True
  kwargs = DEFAULTS

  def __init__(self, config, info, model):
    super().__init__(config, info, model)
    self.num_classes = info.num_classes
    self.threshold_split = self.kw["threshold_split"] or config.dataset.train_split
    if not getattr(info, "multi_label", False):
      raise UserError(
          f"config.task='multilabel' needs a multi-label dataset (a multi-hot label per "
          f"image), but {config.dataset.name!r} has one class per image. Use "
          "config.task='classification', or a multi-label set such as "
          "'digits_multilabel' or the TFDS 'voc/2007'.")
    self.augment = augment_lib.resolve(config.get("augment"))

  # Evaluation reads the threshold split, then the eval split (see module doc).
  def eval_iterator(self, config, **kw):
    held = config.copy_and_resolve_references()
    held.dataset.eval_split = self.threshold_split
    parts = (data_lib.eval_iterator(held, **kw), data_lib.eval_iterator(config, **kw))
    for part, batches in enumerate(parts):
      for batch in batches:
        yield dict(batch, part=np.full(batch["mask"].shape, part, np.int32))

  def train_loss(self, params, model_state, batch, rng, *, consts=None, task_state=None,
                 step=None):
    del consts, task_state, step
    images, targets = batch["image"], batch["label"].astype(jnp.float32)
    if self.config.label_smoothing:
      e = self.config.label_smoothing
      targets = targets * (1.0 - e) + 0.5 * e
    images, targets = mixing.maybe_mix(self.augment, fold_rng(rng, "mixing"), images, targets)
    logits, _, new_state = apply_model(self.model, params, model_state, images,
                                       train=True, rng=rng)
    loss = jnp.mean(bce_loss(logits, targets))
    acc = jnp.mean((logits > 0) == (batch["label"] > 0))
    return loss, ({"label_accuracy": acc}, new_state, None)

  def eval_sums(self, params, model_state, batch):
    logits, _, _ = apply_model(self.model, params, model_state, batch["image"], train=False)
    mask = batch["mask"].astype(jnp.float32)
    labels = batch["label"]
    bins = logit_bins(logits)
    out = {}
    for part, name in enumerate(("threshold", "eval")):
      w = mask * (batch["part"] == part)
      out[f"{name}_hist"] = score_histograms(bins, labels, w, self.num_classes)
      out[f"{name}_count"] = jnp.sum(w)
    out["count"] = out["eval_count"]
    out["loss"] = jnp.sum(bce_loss(logits, labels) * mask * (batch["part"] == 1))
    return out

  def eval_summary(self, sums):
    hist = np.asarray(sums["eval_hist"])
    thresholds = best_thresholds(np.asarray(sums["threshold_hist"]))
    ap = average_precision(hist)
    micro, macro = f1_at(hist, thresholds)
    half = np.full(self.num_classes, NUM_BINS // 2)   # logit >= 0: probability >= 0.5
    micro_half, macro_half = f1_at(hist, half)
    out = {"map": float(np.nanmean(ap)) if np.isfinite(ap).any() else 0.0,
           "micro_f1": micro, "macro_f1": macro,
           "micro_f1_at_0.5": micro_half, "macro_f1_at_0.5": macro_half,
           "loss": sums["loss"] / max(sums["count"], 1.0)}
    names = list(self.info.class_names)
    out.update({f"ap/{names[c]}": float(ap[c]) for c in range(len(ap)) if np.isfinite(ap[c])})
    return out

