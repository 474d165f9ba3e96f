"""MoCo v3 contrastive pretraining (Chen, Xie and He 2021) as a task of the one trainer.

`config.task = 'moco_v3'` with a MoCo model (vitjax/models/moco.py) and
`config.task_kwargs` (defaults: the paper's ViT settings):
  temperature (0.2); momentum (0.99) -> 1 along a half cosine over the run;
  crop_size (input.image_size when 0), crop_scale ((0.08, 1.0)), flip (True),
  jitter_prob (0.8), blur (True: p 1.0 / 0.1), solarize (0.2 on view 2): the
    BYOL views, made in the jitted step (tasks/multicrop.py);
  random_patch_projection (False): the paper's stability trick, a patch
    embedding frozen at its random init; it is done by the optimizer's freeze
    machinery, so the task asks for `config.optimizer.freeze` to hold a
    pattern matching 'patch_embed/' (configs/moco_v3_*.py set both).

Two views x1, x2; queries q_i = predictor(projector(backbone(x_i))) of the
trained encoder, keys k_i = projector(backbone(x_i)) of the momentum encoder
(EMA of the backbone and projector; no gradient). The loss is the symmetric
InfoNCE ctr(q1, k2) + ctr(q2, k1), where ctr(q, k) is the cross-entropy of
the cosine-similarity logits q k^T / T against the diagonal (the other keys
of the batch are the negatives), times 2T as in the paper's code.

Task state: {'momentum_encoder': params without the predictor}. BatchNorm of
the momentum encoder runs on batch statistics, as the trained one does; its
running averages are not kept. Evaluation: the mean of the per-dimension std
of the L2-normalised class tokens over the eval images (0: collapse).
"""

import re

import jax
import jax.numpy as jnp
import ml_collections
import optax

from vitjax.errors import UserError
from vitjax.schedules import cosine_momentum, total_train_steps
from vitjax.tasks.base import Task, apply_model, register_task
from vitjax.tasks.multicrop import ViewSpec, check_crop_size, check_scale, make_views

_DEFAULTS = dict(temperature=0.2, momentum=0.99, crop_size=0, crop_scale=(0.08, 1.0),
                 flip=True, jitter_prob=0.8, blur=True, solarize=0.2,
                 random_patch_projection=False)


def moco_v3_kwargs(**overrides) -> ml_collections.ConfigDict:
  """config.task_kwargs for 'moco_v3', with the defaults filled in."""
  return ml_collections.ConfigDict(dict(_DEFAULTS, **overrides))


def contrastive_loss(q, k, temperature):
  """InfoNCE of queries q [B, D] against keys k [B, D] (row i's positive is k_i), x 2T."""
  q = q / jnp.maximum(jnp.linalg.norm(q, axis=1, keepdims=True), 1e-12)
  k = k / jnp.maximum(jnp.linalg.norm(k, axis=1, keepdims=True), 1e-12)
  logits = q @ k.T / temperature
  labels = jnp.arange(q.shape[0])
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return jnp.mean(ce) * 2.0 * temperature


def symmetric_infonce(q1, q2, k1, k2, temperature):
  return contrastive_loss(q1, k2, temperature) + contrastive_loss(q2, k1, temperature)


def without_predictor(params):
  return {k: v for k, v in params.items() if k != "predictor"}


@register_task("moco_v3")
class MocoV3Task(Task):
  """Queries of the trained encoder vs keys of its momentum copy; no labels."""

  host_augment = True  # the input pipeline's host-side ops run before the views
  kwargs = _DEFAULTS

  def __init__(self, config, info, model):
    super().__init__(config, info, model)
    if not hasattr(model, "proj_dim") or not hasattr(model, "pred_layers"):
      raise UserError(f"config.task='moco_v3' needs a MoCo v3 model (moco_v3_vit_*), not "
                      f"{config.model_name!r}; see vitjax.models.list_models('moco_v3_*').")
    kw = self.kw
    self.crop_size = int(kw["crop_size"] or config.input.image_size)
    check_crop_size("crop_size", self.crop_size, model.patch_size)
    check_scale("crop_scale", kw["crop_scale"])
    if not kw["temperature"] > 0:
      raise UserError(f"config.task_kwargs.temperature={kw['temperature']} must be > 0 "
                      "(paper: 0.2).")
    if not 0.0 <= kw["momentum"] <= 1.0:
      raise UserError(f"config.task_kwargs.momentum={kw['momentum']} must be in [0, 1] "
                      "(paper: 0.99 for ViT, to 1 by a cosine).")
    if kw["random_patch_projection"] and not any(
        re.search(p, "patch_embed/kernel") for p in config.optimizer.freeze):
      raise UserError(
          "config.task_kwargs.random_patch_projection=True keeps the patch embedding at its "
          "random init through the optimizer's freeze machinery: also set "
          "--config.optimizer.freeze='(\"^patch_embed/\",)' (configs/moco_v3_*.py do).")
    self.total_steps = total_train_steps(config, info)
    blur = kw["blur"]
    common = dict(flip=bool(kw["flip"]), jitter_prob=float(kw["jitter_prob"]))
    scale = tuple(kw["crop_scale"])
    self.specs = [
        ViewSpec(self.crop_size, scale, blur_prob=1.0 if blur else 0.0, **common),
        ViewSpec(self.crop_size, scale, blur_prob=0.1 if blur else 0.0,
                 solarize_prob=float(kw["solarize"]), **common)]

  def init_inputs(self):
    return jnp.zeros((1, self.crop_size, self.crop_size, 3), jnp.float32)

  def init_task_state(self, params):
    return {"momentum_encoder": without_predictor(params)}

  def train_loss(self, params, model_state, batch, rng, *, consts=None, task_state=None,
                 step=None):
    del consts
    view_rng, drop_rng = jax.random.split(rng)
    inp = self.config.input
    x1, x2 = make_views(view_rng, batch["image"], self.specs, inp.mean, inp.std)
    b = x1.shape[0]
    # Both views in one call: BatchNorm sees the two views' statistics together
    # (the paper's code runs each view through the encoder separately).
    q, _, new_state = apply_model(self.model, params, model_state,
                                  jnp.concatenate([x1, x2]), train=True, rng=drop_rng)
    momentum_params = jax.lax.stop_gradient(task_state["momentum_encoder"])
    k, _, _ = apply_model(self.model, momentum_params, model_state, jnp.concatenate([x1, x2]),
                          train=True, predict=False)
    k = jax.lax.stop_gradient(k.astype(jnp.float32))
    q = q.astype(jnp.float32)
    loss = symmetric_infonce(q[:b], q[b:], k[:b], k[b:], self.kw["temperature"])
    metrics = {"momentum": cosine_momentum(step, self.total_steps, self.kw["momentum"])}
    return loss, (metrics, new_state, {})

  def update_task_state(self, task_state, params, task_out, step):
    del task_out
    m = cosine_momentum(step, self.total_steps, self.kw["momentum"])
    return {"momentum_encoder": jax.tree.map(lambda e, p: m * e + (1.0 - m) * p,
                                             task_state["momentum_encoder"],
                                             without_predictor(params))}

  def eval_sums(self, params, model_state, batch):
    _, out, _ = apply_model(self.model, params, model_state, batch["image"], train=False,
                            predict=False)
    f = out["pre_logits"].astype(jnp.float32)
    f = f / jnp.maximum(jnp.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    valid = batch["mask"].astype(jnp.float32)[:, None]
    n = jnp.sum(valid)
    mean = jnp.sum(f * valid, axis=0) / jnp.maximum(n, 1.0)
    std = jnp.sqrt(jnp.sum(valid * (f - mean) ** 2, axis=0) / jnp.maximum(n, 1.0))
    return {"count": n, "feature_std": jnp.mean(std) * n}

  def eval_summary(self, sums):
    return {"feature_std": sums["feature_std"] / max(sums["count"], 1.0)}
