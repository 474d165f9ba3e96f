"""Deformable DETR: the deformable attention core vs HF's PyTorch function
(forward and gradients), and the whole detector vs HF
DeformableDetrForObjectDetection (random weights, tiny configs)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vitjax.models.layers.deformable_attention import ms_deform_attn_core
from oracle import redraw

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


def _is_norm(name):
  return name.endswith(("norm.weight", "normalization.weight", ".1.weight"))


def _hf_model(torch, transformers, seed, **kw):
  cfg = transformers.DeformableDetrConfig(
      backbone_config=transformers.ResNetConfig(
          embedding_size=8, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1],
          layer_type="basic", out_features=["stage2", "stage3", "stage4"]),
      use_timm_backbone=False, use_pretrained_backbone=False, d_model=32,
      encoder_layers=1, decoder_layers=2, encoder_ffn_dim=24, decoder_ffn_dim=24,
      encoder_attention_heads=2, decoder_attention_heads=2, num_labels=3, **kw)
  model = transformers.DeformableDetrForObjectDetection(cfg).eval()
  redraw(model, seed, is_norm=_is_norm)
  return model, cfg


@pytest.mark.parametrize("variant,size", [
    (dict(num_queries=6, encoder_n_points=3, decoder_n_points=2), (96, 80)),
    (dict(with_box_refine=True, two_stage=True, num_queries=6, two_stage_num_proposals=6,
          num_feature_levels=3), (88, 72)),
], ids=["plain", "box_refine_two_stage"])
def test_matches_hf_deformable_detr(torch, transformers, variant, size):
  from vitjax.convert.deformable_detr import hf_deformable_detr_to_vitjax
  from vitjax.models.deformable_detr import DeformableDETR
  model, cfg = _hf_model(torch, transformers, seed=1, **variant)
  x = np.random.default_rng(0).normal(size=(2, 3) + size).astype(np.float32)
  with torch.no_grad():
    ref = model(pixel_values=torch.tensor(x))
  cv = hf_deformable_detr_to_vitjax(model.state_dict(), config=cfg)
  variables, kwargs = cv.variables, cv.model_kwargs
  assert kwargs["with_box_refine"] == variant.get("with_box_refine", False)
  assert kwargs["two_stage"] == variant.get("two_stage", False)
  logits, out = jax.jit(DeformableDETR(**kwargs).apply)(
      variables, jnp.asarray(x.transpose(0, 2, 3, 1)))
  dl = np.abs(np.asarray(logits) - ref.logits.numpy()).max()
  db = np.abs(np.asarray(out["boxes"]) - ref.pred_boxes.numpy()).max()
  print(f"\n{sorted(variant)}: logits diff {dl:.2e}, boxes diff {db:.2e}")
  assert dl <= 1e-4 and db <= 1e-4, (dl, db)
  assert len(out["aux"]) == 1 and ref.logits.numpy().std() > 0.1
  if variant.get("two_stage"):
    de = np.abs(np.asarray(out["enc_outputs"]["logits"]) - ref.enc_outputs_class.numpy()).max()
    assert de <= 1e-4, de


def test_param_count_matches_paper():
  from vitjax.models.registry import create_model
  model = create_model("deformable_detr_resnet50")
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3))))
  n = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes["params"]))
  assert abs(n - 40e6) / 40e6 < 0.01, n  # paper Table 1: 40M


def test_bad_config_refused():
  from vitjax.errors import UserError
  from vitjax.models.registry import create_model
  with pytest.raises(UserError, match="multiple of 32"):
    create_model("deformable_detr_tiny", hidden_dim=48)
  with pytest.raises(UserError, match="with_box_refine"):
    create_model("deformable_detr_tiny", two_stage=True)
