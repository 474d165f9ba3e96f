"""PVT v1 / v2: sizes, outputs, bad inputs and HF weight parity.

HF reference models are built from tiny configs with every parameter
re-drawn (LayerNorms included); fp32 logits must agree to 1e-4. The torch
tests skip without torch / transformers.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vitjax.convert.pvt import hf_pvt_to_vitjax, hf_pvt_v2_to_vitjax
from vitjax.errors import UserError
from vitjax.models.pvt import (PyramidVisionTransformer, PyramidVisionTransformerV2,
                               adaptive_avg_pool_matrix)
from oracle import count_params, max_abs_diff, randomize

TOL = 1e-4
TINY_V2 = dict(embed_dims=(8, 16), depths=(1, 2), num_heads=(1, 2), mlp_ratios=(2, 2),
               sr_ratios=(2, 1), patch_sizes=(7, 3), strides=(4, 2), num_classes=3)

PUBLISHED = {"pvt_v2_b0": 3.7, "pvt_v2_b1": 14.0, "pvt_v2_b2": 25.4, "pvt_v2_b2_li": 22.6,
             "pvt_v2_b3": 45.2, "pvt_v2_b4": 62.6, "pvt_v2_b5": 82.0,
             "pvt_tiny": 13.2, "pvt_small": 24.5, "pvt_medium": 44.2, "pvt_large": 61.4}
# How `randomize` re-draws the references: LayerNorm scales ~ 1 + N(0, 0.1), the
# head ~ N(0, 0.5), everything else (biases, convs, BatchNorm affine) ~ N(0, 0.05);
# BatchNorm running means ~ N(0, 0.1), running variances ~ U(0.5, 1.5).
STYLE = dict(wide=("classifier",), bn_mean_std=0.1)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_param_counts_match_papers(name):
  got, want = count_params(name) / 1e6, PUBLISHED[name]
  assert abs(got - want) / want < 0.01, (name, got, want)


def test_adaptive_pool_matrix():
  m = adaptive_avg_pool_matrix(10, 7)  # windows of 2, overlapping
  np.testing.assert_allclose(m.sum(1), 1.0)
  assert m[0, :2].tolist() == [0.5, 0.5] and m[1, 1:3].tolist() == [0.5, 0.5]
  up = adaptive_avg_pool_matrix(2, 7)  # smaller than 7: repeats inputs
  assert up.tolist()[3] == [0.5, 0.5] and up[0].tolist() == [1.0, 0.0]


@pytest.mark.slow
def test_v2_outputs_and_drop_path():
  m = PyramidVisionTransformerV2(**TINY_V2, drop_path_rate=0.3, head_zero_init=False)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 32, 32, 3))

  @jax.jit  # one compilation for everything
  def run(x):
    variables = m.init(jax.random.PRNGKey(1), x)
    logits, out = m.apply(variables, x)
    f = lambda r: m.apply(variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(r)})[0]
    return logits, out, f(0), f(1)

  logits, out, train0, train1 = run(x)
  assert logits.shape == (2, 3)
  assert out["stage_0"].shape == (2, 8, 8, 8) and out["stage_1"].shape == (2, 4, 4, 16)
  assert out["pre_logits"].shape == (2, 16)
  assert not np.allclose(train0, train1)  # stochastic depth is active


@pytest.mark.slow
def test_v1_outputs_and_bad_size():
  m = PyramidVisionTransformer(embed_dims=(8, 16), depths=(1, 1), num_heads=(1, 2),
                               mlp_ratios=(2, 2), sr_ratios=(2, 1), patch_sizes=(4, 2),
                               image_size=32, num_classes=3, head_zero_init=False)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 32, 32, 3))

  @jax.jit  # one compilation for everything
  def run(x, x48):
    variables = m.init(jax.random.PRNGKey(1), x)
    # At 48 px the stored 8x8 / 4x4 position grids are resampled to 12x12 / 6x6.
    return variables, m.apply(variables, x), m.apply(variables, x48)[0]

  variables, (logits, out), big = run(x, jnp.ones((1, 48, 48, 3)))
  assert variables["params"]["stage_1_pos_embed"].shape == (1, 17, 16)  # 4x4 + class
  assert logits.shape == (2, 3) and out["stage_1"].shape == (2, 4, 4, 16)
  assert out["pre_logits"].shape == (2, 16)
  assert big.shape == (1, 3) and np.isfinite(np.asarray(big)).all()
  # Any size is floored (36 -> 9x9, 4x4; tests/test_any_size.py); a map
  # smaller than its reduction ratio is refused.
  with pytest.raises(UserError, match=r"stage 0 a map side of 1, smaller than its "
                                      r"spatial-reduction ratio 2.*input side >= 8"):
    m.init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 36, 3)))


def test_v2_bad_sizes_are_user_errors():
  m = PyramidVisionTransformerV2(**TINY_V2)
  # The strided convs floor any size (tests/test_any_size.py: HF parity);
  # only a map smaller than its reduction ratio is refused (4 px -> 1x1, sr 2).
  v = jax.eval_shape(m.init, jax.random.PRNGKey(0), jnp.zeros((1, 36, 30, 3)))
  assert jax.eval_shape(m.apply, v, jnp.zeros((1, 36, 30, 3)))[1]["stage_1"].shape == (
      1, 5, 4, 16)
  with pytest.raises(UserError, match=r"input width 4 gives stage 0 a map side of 1.*"
                                      r"input side >= 5"):
    m.init(jax.random.PRNGKey(0), jnp.zeros((1, 30, 4, 3)))


# ---------------------------------------------------------------------------
# Parity with HF transformers.

def _parity_v2(torch, transformers, image, **cfg_kw):
  cfg = transformers.PvtV2Config(num_labels=5, **cfg_kw)
  ref = randomize(transformers.PvtV2ForImageClassification(cfg), **STYLE)
  x = torch.randn(2, 3, image, image, generator=torch.Generator().manual_seed(1))
  with torch.no_grad():
    want = ref(pixel_values=x).logits.numpy()
  cv = hf_pvt_v2_to_vitjax(ref.state_dict(), cfg)
  params, kw = cv.params, cv.model_kwargs
  m = PyramidVisionTransformerV2(**kw)
  got, _ = jax.jit(m.apply)({"params": params}, jnp.asarray(x.numpy().transpose(0, 2, 3, 1)))
  diff = max_abs_diff(want, got)
  assert diff <= TOL, diff
  return diff


def test_hf_pvt_v2_parity(torch, transformers):
  _parity_v2(torch, transformers, 64, hidden_sizes=[8, 16, 24, 32], depths=[1, 2, 1, 1],
             num_attention_heads=[1, 2, 3, 4], mlp_ratios=[2, 2, 2, 2])


def test_hf_pvt_v2_linear_parity(torch, transformers):
  # 96 px: stage maps 24 (pooled 7x7 from overlapping windows), 12, 6 and 3
  # (pooled "up" to 7x7).
  _parity_v2(torch, transformers, 96, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 2, 1],
             num_attention_heads=[1, 2, 2, 4], mlp_ratios=[2, 4, 2, 2],
             linear_attention=True, layer_norm_eps=1e-5)


def test_hf_pvt_v1_parity(torch, transformers):
  cfg = transformers.PvtConfig(num_labels=5, image_size=64, hidden_sizes=[8, 16, 24, 32],
                               depths=[1, 2, 1, 1], num_attention_heads=[1, 2, 3, 4],
                               mlp_ratios=[2, 2, 2, 2])
  ref = randomize(transformers.PvtForImageClassification(cfg), **STYLE)
  x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
  with torch.no_grad():
    want = ref(pixel_values=x).logits.numpy()
  cv = hf_pvt_to_vitjax(ref.state_dict(), cfg)
  params, kw = cv.params, cv.model_kwargs
  assert kw["sr_ratios"] == (8, 4, 2, 1) and kw["depths"] == (1, 2, 1, 1)
  got, _ = jax.jit(PyramidVisionTransformer(**kw).apply)(
      {"params": params}, jnp.asarray(x.numpy().transpose(0, 2, 3, 1)))
  diff = max_abs_diff(want, got)
  assert diff <= TOL, diff


def test_hf_pvt_v2_rejects_other_weights():
  with pytest.raises(UserError, match="Not a HF PVT v2"):
    hf_pvt_v2_to_vitjax({"foo.weight": np.zeros((2, 2))})
