"""What every task shares: running the model with its mutable state."""

import zlib

import jax


def apply_model(model, params, model_state, inputs, *, train: bool, rng=None, **kwargs):
  """Runs `model` on `inputs`; returns (logits, out, new_model_state).

  `kwargs` go to the model's call (e.g. LV-ViT's `mix_box`).

  `model_state` holds non-parameter collections (e.g. BatchNorm's
  'batch_stats'); they are updated in training and read-only in evaluation.
  """
  variables = {"params": params, **model_state}
  rngs = {"dropout": rng} if rng is not None else {}
  if train and model_state:
    (logits, out), new_state = model.apply(
        variables, inputs, train=True, rngs=rngs, mutable=list(model_state), **kwargs)
    return logits, out, dict(new_state)
  logits, out = model.apply(variables, inputs, train=train, rngs=rngs, **kwargs)
  return logits, out, model_state


def fold_rng(rng, name: str):
  """A named sub-stream of `rng` (stable across code changes elsewhere)."""
  return jax.random.fold_in(rng, zlib.crc32(name.encode()) % (2 ** 31))
