"""Supervised multi-class classification: softmax cross-entropy, top-1/top-5.

With config.augment Mixup / CutMix on, the train step mixes the batch and
trains on the soft targets (vitjax/tasks/mixing.py); train accuracy is then
measured against the unmixed labels.
"""

import jax
import jax.numpy as jnp
import optax

from vitjax.data import augment as augment_lib
from vitjax.errors import UserError
from vitjax.tasks import mixing
from vitjax.tasks.base import Task, apply_model, fold_rng, register_task


def cross_entropy(logits, labels, num_classes: int, label_smoothing: float = 0.0):
  """Mean softmax cross-entropy with optional label smoothing."""
  onehot = jax.nn.one_hot(labels, num_classes)
  if label_smoothing:
    onehot = optax.smooth_labels(onehot, label_smoothing)
  return jnp.mean(optax.softmax_cross_entropy(logits.astype(jnp.float32), onehot))


def topk_correct(logits, labels, k: int):
  """1.0 where the label is among the k highest logits."""
  k = min(k, logits.shape[-1])
  topk = jax.lax.top_k(logits, k)[1]
  return jnp.any(topk == labels[:, None], axis=-1).astype(jnp.float32)


@register_task("classification")
class ClassificationTask(Task):
  """Images -> one of `num_classes` labels."""

  host_augment = True
  mixes_batches = True

  def __init__(self, config, info, model):
    super().__init__(config, info, model)
    self.num_classes = info.num_classes
    self.augment = augment_lib.resolve(config.get("augment"))
    if getattr(info, "multi_label", False):
      raise UserError(
          f"config.dataset.name={config.dataset.name!r} is multi-label (several classes "
          f"per image) but config.task={config.task!r} is single-label softmax "
          "classification; use --config.task=multilabel.")

  def train_loss(self, params, model_state, batch, rng, *, consts=None, task_state=None,
                 step=None):
    del consts, task_state, step
    images = batch["image"]
    if self.augment.mixing:
      targets = jax.nn.one_hot(batch["label"], self.num_classes)
      if self.config.label_smoothing:
        targets = optax.smooth_labels(targets, self.config.label_smoothing)
      images, targets = mixing.maybe_mix(self.augment, fold_rng(rng, "mixing"), images,
                                         targets)
    logits, _, new_state = apply_model(self.model, params, model_state, images,
                                       train=True, rng=rng)
    if self.augment.mixing:
      loss = jnp.mean(optax.softmax_cross_entropy(logits.astype(jnp.float32), targets))
    else:
      loss = cross_entropy(logits, batch["label"], self.num_classes,
                           self.config.label_smoothing)
    acc = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
    return loss, ({"accuracy": acc}, new_state, None)

  def eval_sums(self, params, model_state, batch):
    logits, _, _ = apply_model(self.model, params, model_state, batch["image"], train=False)
    mask = batch["mask"].astype(jnp.float32)
    labels = batch["label"]
    losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    return {
        "count": jnp.sum(mask),
        "loss": jnp.sum(losses * mask),
        "correct": jnp.sum(topk_correct(logits, labels, 1) * mask),
        "correct_top5": jnp.sum(topk_correct(logits, labels, 5) * mask),
    }

  def eval_summary(self, sums):
    n = max(sums["count"], 1.0)
    return {"loss": sums["loss"] / n, "accuracy": sums["correct"] / n,
            "top5_accuracy": sums["correct_top5"] / n}
