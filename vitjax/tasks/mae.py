"""Masked-image-modelling pretraining (MAE): the model's own reconstruction loss.

Plugs into the one trainer like classification: labels are read by nobody.
Training masks with the step's RNG (the model draws its noise from the
'dropout' stream the trainer passes); evaluation masks with a fixed key, so
the eval reconstruction loss of two checkpoints is measured on the same
masks.
"""

import jax
import jax.numpy as jnp

from vitjax.errors import UserError
from vitjax.tasks.base import Task, apply_model, fold_rng, register_task

_EVAL_SEED = 0


@register_task("mae")
class MaeTask(Task):
  """Images -> reconstruct the masked patches (pixels, MSE on masked ones)."""

  host_augment = True

  def __init__(self, config, info, model):
    super().__init__(config, info, model)  # info: no labels read
    if not hasattr(model, "mask_ratio"):
      raise UserError(f"config.task='mae' needs a masked-autoencoder model (mae_vit_*), "
                      f"not {config.model_name!r}; see vitjax.models.list_models('mae_*').")

  def train_loss(self, params, model_state, batch, rng, *, consts=None, task_state=None,
                 step=None):
    del consts, task_state, step
    _, out, new_state = apply_model(self.model, params, model_state, batch["image"],
                                    train=True, rng=rng)
    return out["loss"], ({}, new_state, None)

  def eval_sums(self, params, model_state, batch):
    rng = fold_rng(jax.random.PRNGKey(_EVAL_SEED), "mae_eval_masks")
    _, out, _ = apply_model(self.model, params, model_state, batch["image"],
                            train=False, rng=rng)
    valid = batch["mask"].astype(jnp.float32)
    masked = out["mask"]
    per_image = jnp.sum(out["patch_loss"] * masked, axis=1) / jnp.sum(masked, axis=1)
    return {"count": jnp.sum(valid), "loss": jnp.sum(per_image * valid)}

  def eval_summary(self, sums):
    return {"loss": sums["loss"] / max(sums["count"], 1.0)}
