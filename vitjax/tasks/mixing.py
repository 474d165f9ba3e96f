"""Mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019) inside the jitted step.

Every image i is mixed with its partner in the reversed batch (i <-> B-1-i):
  Mixup:  x = lam * x_i + (1 - lam) * x_partner,        lam ~ Beta(a, a)
  CutMix: a box of area (1 - lam) * H * W, centre uniform, clipped to the
          image, is pasted from the partner; lam is then set to 1 - the
          clipped box's area / (H * W), so the label mass equals the pixels'.
  targets = lam * y_i + (1 - lam) * y_partner             (soft targets)
With both alphas > 0, CutMix is picked with probability `switch_prob`;
mixing happens at all with probability `mix_prob` (else lam = 1).
mode 'batch': one draw (lam, mixup-or-cutmix, box) for the whole batch;
mode 'elem': an independent draw per example.

All randomness comes from the rng passed in (the step rng, via fold_rng), so
runs are deterministic and resume exactly. On device these are a few
elementwise ops on the batch already there; done on the host they would cost
a second batch copy per step.
"""

import jax
import jax.numpy as jnp


def cutmix_box(rng, height: int, width: int, lam):
  """(y0, y1, x0, x1) int32 of a box with area ~ (1 - lam) H W, clipped."""
  k_y, k_x = jax.random.split(rng)
  cut = jnp.sqrt(1.0 - lam)
  ch = jnp.floor(height * cut).astype(jnp.int32)
  cw = jnp.floor(width * cut).astype(jnp.int32)
  cy = jax.random.randint(k_y, (), 0, height)
  cx = jax.random.randint(k_x, (), 0, width)
  y0 = jnp.clip(cy - ch // 2, 0, height)
  y1 = jnp.clip(cy + ch // 2, 0, height)
  x0 = jnp.clip(cx - cw // 2, 0, width)
  x1 = jnp.clip(cx + cw // 2, 0, width)
  return y0, y1, x0, x1


def box_mask(box, height: int, width: int):
  """[H, W] float32: 1 inside the box."""
  y0, y1, x0, x1 = box
  rows = jnp.arange(height)[:, None]
  cols = jnp.arange(width)[None, :]
  return ((rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)).astype(jnp.float32)


def _draw(rng, height: int, width: int, mixup_alpha: float, cutmix_alpha: float,
          mix_prob: float, switch_prob: float):
  """One draw: (keep-mask [H, W] of the own image, lam of the own image)."""
  k_apply, k_switch, k_mix, k_cut, k_box = jax.random.split(rng, 5)
  use_cutmix = (cutmix_alpha > 0) & ((mixup_alpha <= 0) |
                                     (jax.random.uniform(k_switch) < switch_prob))
  lam_mix = (jax.random.beta(k_mix, mixup_alpha, mixup_alpha) if mixup_alpha > 0 else jnp.float32(1.0))
  lam_cut = (jax.random.beta(k_cut, cutmix_alpha, cutmix_alpha) if cutmix_alpha > 0 else jnp.float32(1.0))
  box = box_mask(cutmix_box(k_box, height, width, lam_cut), height, width)
  lam_cut = 1.0 - jnp.sum(box) / (height * width)
  applied = jax.random.uniform(k_apply) < mix_prob
  lam = jnp.where(applied, jnp.where(use_cutmix, lam_cut, lam_mix), 1.0)
  keep = jnp.where(use_cutmix, 1.0 - box, jnp.full((height, width), lam_mix))
  keep = jnp.where(applied, keep, 1.0)
  return keep, lam.astype(jnp.float32)


def mix_batch(rng, images, targets, *, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0,
              mix_prob: float = 1.0, switch_prob: float = 0.5, mode: str = "batch"):
  """images [B, H, W, C], targets [B, K] (probabilities / multi-hot) ->
  (mixed images, mixed targets, lam [B])."""
  b, h, w, _ = images.shape
  draw = lambda r: _draw(r, h, w, mixup_alpha, cutmix_alpha, mix_prob, switch_prob)
  if mode == "elem":
    keep, lam = jax.vmap(draw)(jax.random.split(rng, b))
  else:
    keep, lam = draw(rng)
    keep, lam = jnp.broadcast_to(keep, (b, h, w)), jnp.broadcast_to(lam, (b,))
  keep = keep[..., None].astype(images.dtype)
  mixed = keep * images + (1.0 - keep) * images[::-1]
  t = targets.astype(jnp.float32)
  mixed_targets = lam[:, None] * t + (1.0 - lam[:, None]) * t[::-1]
  return mixed, mixed_targets, lam


def maybe_mix(aug, rng, images, targets):
  """mix_batch with the settings of an `Augment`; identity when mixing is off."""
  if not aug.mixing:
    return images, targets
  mixed, t, _ = mix_batch(rng, images, targets, mixup_alpha=aug.mixup_alpha,
                          cutmix_alpha=aug.cutmix_alpha, mix_prob=aug.mix_prob,
                          switch_prob=aug.switch_prob, mode=aug.mix_mode)
  return mixed, t
