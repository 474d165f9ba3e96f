"""Token labeling (Jiang et al. 2021, "All Tokens Matter"): classification
where every patch token also gets a location-specific soft label.

loss = CE(cls logits, cls target) + dense_weight * mean over tokens of
       CE(token logits, dense target)              (soft-target cross-entropy)

with dense_weight = 0.5 (the official training default) and, under MixToken,
the class target mixed as lam * y + (1 - lam) * y_reversed (lam = 1 - box
area / tokens; the token outputs are swapped back by the model, so the dense
targets stay those of each image). Evaluation is classification with the
model's `logits` (LV-ViT: cls + 0.5 * max over the token logits).

Where the dense targets come from (config.task_kwargs):
  teacher_checkpoint='' (default): no machine annotator; every token's target
    is its image's (smoothed) label, as the official loss does for batches
    without token labels. Together with MixToken this is plain LV-ViT training.
  teacher_checkpoint=<vitjax workdir>: a frozen vitjax model, rebuilt from the
    workdir's config.json (or `teacher_model` / `teacher_overrides`) with the
    checkpoint's weights, runs inside the jitted train step on the unmixed
    batch. Its dense score map is `out['token_logits']` when it has one (an
    LV-ViT teacher), else its own `head` applied to every position of
    `out['feature_map']` (ViT, Swin, PVT...: the features the head sees) or
    of its deepest feature level (CNNs: class activation maps). The map is
    average-pooled (grid sizes that divide) or bilinearly resized to the
    student's token grid, then softmaxed with `teacher_temperature`;
    `teacher_topk` > 0 keeps only the top-k classes per token (renormalised),
    as the official stored label maps keep the top 5.
  label_maps=<directory>: score maps read from a file written once by
    `python -m vitjax.tools.label_maps --teacher=<workdir> --out=<directory>`
    (top-k logits per position of every whole train image; see
    vitjax.data.label_maps). Needs config.input.return_geometry=True: the
    input pipeline then reports each example's index, crop box and flip, the
    task's train_iterator adds the example's map to the batch on the host, and
    the jitted loss cuts the crop out of it (crop_score_map), flipped as the
    image was. `teacher_temperature` applies; the stored top k are kept.
Other keys: dense_weight (0.5), mix_token (True), mix_alpha (1.0, Beta(a, a)
of the MixToken box area).
"""

import inspect

import jax
import jax.numpy as jnp
import optax

from vitjax.errors import UserError
from vitjax.models.features import select_features
from vitjax.tasks.base import apply_model, fold_rng, register_task
from vitjax.tasks.classification import ClassificationTask

DEFAULTS = dict(dense_weight=0.5, mix_token=True, mix_alpha=1.0, teacher_checkpoint="",
                teacher_model="", teacher_overrides=None, teacher_temperature=1.0,
                teacher_topk=0, label_maps="")


def soft_cross_entropy(logits, targets):
  """Per-row cross-entropy of softmax(logits) against probability `targets`."""
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def mix_targets(targets, lam):
  """MixToken's class target: lam * own + (1 - lam) * the reversed batch's."""
  return lam * targets + (1.0 - lam) * targets[::-1]


def token_labeling_loss(logits_cls, token_logits, cls_targets, dense_targets,
                        dense_weight: float = 0.5):
  """Mean soft CE of the class logits [B, K] + dense_weight * mean soft CE of
  the token logits [B, N, K] against dense_targets [B, N, K]; returns
  (loss, cls part, dense part)."""
  loss_cls = jnp.mean(soft_cross_entropy(logits_cls, cls_targets))
  loss_dense = jnp.mean(soft_cross_entropy(token_logits, dense_targets))
  return loss_cls + dense_weight * loss_dense, loss_cls, loss_dense


def resize_score_map(scores, grid):
  """[B, h, w, K] -> [B, gh, gw, K]: mean over each cell when the grids divide
  (RoI-style averaging), else bilinear."""
  b, h, w, k = scores.shape
  gh, gw = grid
  if (h, w) == (gh, gw):
    return scores
  if h % gh == 0 and w % gw == 0:
    return scores.reshape(b, gh, h // gh, gw, w // gw, k).mean(axis=(2, 4))
  return jax.image.resize(scores, (b, gh, gw, k), method="bilinear")


def teacher_score_map(out, variables, model):
  """A teacher's dense logits [B, h, w, K] from its `out` dict (see module doc);
  `model` (the teacher) declares its feature levels (vitjax/models/features.py)."""
  if "token_logits" in out:
    b, h, w, _ = out["feature_map"].shape
    return out["token_logits"].reshape(b, h, w, -1)
  if "feature_map" in out:
    fmap = out["feature_map"]
  else:  # the deepest declared level (CNNs: the last stage)
    fmap = select_features(model, out, levels=(-1,))[0]
  head = variables["params"].get("head")
  if head is None or "kernel" not in head or head["kernel"].shape[0] != fmap.shape[-1]:
    raise UserError("token_labeling: the teacher has no Dense 'head' that applies to its "
                    f"feature map of width {fmap.shape[-1]}; use a teacher whose head "
                    "reads the final feature map (ViT, DeiT, Swin, PVT, ResNet, LV-ViT).")
  return fmap.astype(jnp.float32) @ head["kernel"] + head.get("bias", 0.0)


def dense_targets_from_scores(scores, grid, temperature=1.0, topk=0):
  """Teacher logits [B, h, w, K] -> soft targets [B, gh*gw, K] on the student grid."""
  scores = resize_score_map(scores.astype(jnp.float32), grid)
  b, gh, gw, k = scores.shape
  probs = jax.nn.softmax(scores.reshape(b, gh * gw, k) / temperature, axis=-1)
  if topk and topk < k:
    kth = jax.lax.top_k(probs, topk)[0][..., -1:]
    probs = jnp.where(probs >= kth, probs, 0.0)
    probs = probs / jnp.sum(probs, axis=-1, keepdims=True)
  return jax.lax.stop_gradient(probs)


def _load_teacher(kw, num_classes):
  """(teacher module, variables) from a vitjax workdir / checkpoint."""
  from vitjax import runs  # pylint: disable=g-import-not-at-top
  from vitjax.models import create_model  # pylint: disable=g-import-not-at-top
  path, what = kw["teacher_checkpoint"], "config.task_kwargs.teacher_checkpoint"
  overrides = {k: tuple(v) if isinstance(v, list) else v
               for k, v in dict(kw["teacher_overrides"] or {}).items()}
  if kw["teacher_model"]:  # a named model: the checkpoint alone, no config.json needed
    teacher = create_model(kw["teacher_model"], **{"num_classes": num_classes, **overrides})
    variables, _ = runs.load_weights(path, what=what)
  else:
    config = runs.read_config(path, what)
    config.model.update(overrides)
    run = runs.load_run(path, config=config, num_classes=num_classes, what=what)
    teacher, variables = run.model, run.variables
  return teacher, jax.tree.map(jnp.asarray, variables)


@register_task("token_labeling")
class TokenLabelingTask(ClassificationTask):
  """Classification + per-token soft labels + MixToken, for LV-ViT-like models."""

  mixes_batches = False  # MixToken mixes inside the model; Mixup / CutMix targets unused
  kwargs = DEFAULTS

  def __init__(self, config, info, model):
    super().__init__(config, info, model)
    if "mix_box" not in inspect.signature(type(model).__call__).parameters:
      raise UserError(f"token_labeling needs a model with per-token logits and MixToken "
                      f"(out['token_logits'], a mix_box argument), e.g. lvvit_s; "
                      f"{type(model).__name__} has none.")
    self.teacher, self.teacher_variables = None, None
    if self.kw["teacher_checkpoint"]:
      self.teacher, self.teacher_variables = _load_teacher(self.kw, self.num_classes)
    self.label_maps = None
    if self.kw["label_maps"]:
      if self.kw["teacher_checkpoint"]:
        raise UserError("token_labeling: set either task_kwargs.teacher_checkpoint (score "
                        "maps on the fly) or task_kwargs.label_maps (from a file), not both.")
      if not config.input.get("return_geometry", False):
        raise UserError("token_labeling: task_kwargs.label_maps needs "
                        "config.input.return_geometry=True (each batch must say which "
                        "example it holds and how it was cropped and flipped); add "
                        "--config.input.return_geometry=True.")
      from vitjax.data.label_maps import LabelMaps  # pylint: disable=g-import-not-at-top
      self.label_maps = LabelMaps(self.kw["label_maps"])
      self.label_maps.check(self.num_classes, info.num_train_examples)

  # Batches: vitjax.data's, plus each example's stored score map (label_maps).
  def train_iterator(self, config, **kwargs):
    batches = super().train_iterator(config, **kwargs)
    if self.label_maps is None:
      return batches
    return ({**b, **self.label_maps.lookup(b["index"])} for b in batches)

  def dense_targets(self, images, labels_soft, grid, batch=None):
    """[B, N, K] token targets: the teacher's score maps (on the fly or from the
    stored label maps), or the image labels."""
    if self.label_maps is not None:
      from vitjax.data.label_maps import crop_score_map, dense_from_topk  # pylint: disable=g-import-not-at-top
      dense = dense_from_topk(batch["label_map_values"], batch["label_map_indices"],
                              self.num_classes, self.kw["teacher_temperature"])
      dense = crop_score_map(dense, batch["crop_box"], batch["flipped"], grid)
      return jax.lax.stop_gradient(dense.reshape(dense.shape[0], grid[0] * grid[1], -1))
    if self.teacher is None:
      b, k = labels_soft.shape
      return jnp.broadcast_to(labels_soft[:, None], (b, grid[0] * grid[1], k))
    _, out = self.teacher.apply(self.teacher_variables, images, train=False)
    scores = teacher_score_map(out, self.teacher_variables, self.teacher)
    return dense_targets_from_scores(scores, grid, self.kw["teacher_temperature"],
                                     self.kw["teacher_topk"])

  def train_loss(self, params, model_state, batch, rng, *, consts=None, task_state=None,
                 step=None):
    del consts, task_state, step
    images, labels = batch["image"], batch["label"]
    p = self.model.patch_size
    grid = (images.shape[1] // p, images.shape[2] // p)
    target = jax.nn.one_hot(labels, self.num_classes)
    if self.config.label_smoothing:
      target = optax.smooth_labels(target, self.config.label_smoothing)
    dense = self.dense_targets(images, target, grid, batch)
    box = None
    if self.kw["mix_token"]:
      from vitjax.models.lvvit import box_lam, rand_token_box  # pylint: disable=g-import-not-at-top
      box = rand_token_box(fold_rng(rng, "mix_token"), *grid, alpha=self.kw["mix_alpha"])
      target = mix_targets(target, box_lam(box, *grid))
    _, out, new_state = apply_model(self.model, params, model_state, images, train=True,
                                    rng=rng, mix_box=box)
    loss, loss_cls, loss_dense = token_labeling_loss(
        out["logits_cls"], out["token_logits"], target, dense, self.kw["dense_weight"])
    acc = jnp.mean(jnp.argmax(out["logits_cls"], -1) == labels)
    return loss, ({"accuracy": acc, "loss_cls": loss_cls, "loss_dense": loss_dense},
                  new_state, None)
