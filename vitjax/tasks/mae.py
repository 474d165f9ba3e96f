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
from vitjax.tasks.base import apply_model, fold_rng

_EVAL_SEED = 0


class MaeTask:
  """Images -> reconstruct the masked patches (pixels, MSE on masked ones)."""

  def __init__(self, config, info, model):
    del info  # no labels
    self.config = config
    self.model = model
    if not hasattr(model, "mask_ratio"):
      raise UserError(f"config.task='mae' needs a masked-autoencoder model (mae_vit_*), "
                      f"not {config.model_name!r}; see vitjax.models.list_models('mae_*').")

  def init_inputs(self):
    s = self.config.input.image_size
    return jnp.zeros((1, s, s, 3), jnp.float32)

  def train_loss(self, params, model_state, batch, rng):
    _, out, new_state = apply_model(self.model, params, model_state, batch["image"],
                                    train=True, rng=rng)
    return out["loss"], ({}, new_state)

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
