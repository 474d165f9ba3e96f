"""Deformable DETR: the deformable attention core vs HF's PyTorch function
(forward and gradients), and the whole detector vs HF
DeformableDetrForObjectDetection (random weights, tiny configs)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vitjax.models.layers.deformable_attention import ms_deform_attn_core

SHAPES = ((7, 5), (4, 3), (2, 1))  # odd sizes, three levels


def _msda_inputs(seed=0, b=2, q=9, nh=2, dh=4, k=3):
  rng = np.random.default_rng(seed)
  s = sum(h * w for h, w in SHAPES)
  value = rng.normal(size=(b, s, nh, dh)).astype(np.float32)
  # Locations a little beyond [0, 1] too: those corners read zero padding.
  loc = rng.uniform(-0.15, 1.15, size=(b, q, nh, len(SHAPES), k, 2)).astype(np.float32)
  attn = rng.uniform(size=(b, q, nh, len(SHAPES), k)).astype(np.float32)
  cot = rng.normal(size=(b, q, nh * dh)).astype(np.float32)
  return value, loc, attn, cot


def test_ms_deform_attn_matches_hf_forward_and_grad(torch, transformers):
  from transformers.models.deformable_detr.modeling_deformable_detr import (
      MultiScaleDeformableAttention)
  value, loc, attn, cot = _msda_inputs()
  tv, tl, ta = (torch.tensor(a, requires_grad=True) for a in (value, loc, attn))
  shapes_t = torch.tensor(SHAPES)
  start = torch.cat([shapes_t.new_zeros(1), shapes_t.prod(1).cumsum(0)[:-1]])
  ref = MultiScaleDeformableAttention()(tv, shapes_t, list(SHAPES), start, tl, ta, 64)
  (ref * torch.tensor(cot)).sum().backward()

  out, vjp = jax.vjp(lambda v, l, a: ms_deform_attn_core(v, SHAPES, l, a),
                     jnp.asarray(value), jnp.asarray(loc), jnp.asarray(attn))
  gv, gl, ga = vjp(jnp.asarray(cot))
  assert np.abs(np.asarray(out) - ref.detach().numpy()).max() <= 1e-5
  for name, g, t in (("value", gv, tv), ("locations", gl, tl), ("weights", ga, ta)):
    diff = np.abs(np.asarray(g) - t.grad.numpy()).max()
    assert diff <= 1e-5, (name, diff)
  assert np.abs(np.asarray(gl)).max() > 1e-2  # the location gradient is not trivially 0


def test_ms_deform_attn_corner_reads_pixel():
  # A location at a pixel centre reads that pixel exactly; off the map reads zero.
  value = jnp.arange(12.0).reshape(1, 12, 1, 1)  # one 3x4 map
  loc = jnp.asarray([[1.5 / 4, 0.5 / 3], [2.0, 2.0]]).reshape(1, 2, 1, 1, 1, 2)
  out = ms_deform_attn_core(value, ((3, 4),), loc, jnp.ones((1, 2, 1, 1, 1)))
  np.testing.assert_allclose(np.asarray(out)[0, :, 0], [1.0, 0.0], atol=1e-6)
