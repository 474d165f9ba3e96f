"""ViT / DeiT architecture, registry and shared layers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vitjax.errors import UserError
from vitjax.models import create_model, list_models
from vitjax.models.layers import DropPath, resample_posemb, sincos_posemb_2d
from oracle import count_params


# Exact counts with 1000 classes (vision_transformer / timm).
@pytest.mark.parametrize("name,count", [
    ("vit_base_patch16_224", 86_567_656),
    ("vit_tiny_patch16_224", 5_717_416),
    ("vit_small_patch16_224", 22_050_664),
    ("vit_small_patch32_224", 22_878_952),
    ("vit_large_patch16_224", 304_326_632),
    ("deit_tiny_distilled_patch16_224", 5_910_800),
    ("deit_base_distilled_patch16_224", 87_338_192),
])
def test_param_counts(name, count):
  assert count_params(create_model(name)) == count


def test_registry_lists_all_sizes_and_patches():
  names = list_models("vit_*")
  for size in ("tiny", "small", "base", "large", "huge"):
    for patch in (8, 14, 16, 32):
      assert f"vit_{size}_patch{patch}_224" in names
  assert "deit_small_distilled_patch16_224" in list_models("deit_*")


def test_unknown_model_suggests_close_name():
  with pytest.raises(UserError, match="vit_tiny_patch16_224"):
    create_model("vit_tiny_patch16_244")


def test_bad_override_is_user_error():
  with pytest.raises(UserError, match="override"):
    create_model("vit_tiny_patch16_224", no_such_field=3)


def tiny(**kw):
  kw = dict(hidden_size=32, depth=2, num_heads=2, mlp_dim=64, patch_size=4, num_classes=5) | kw
  return create_model("vit_tiny_patch16_224", **kw)


@pytest.mark.slow
def test_deit_logits_are_mean_of_two_heads():
  m = tiny(distilled=True, head_zero_init=False)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 16, 16, 3))
  v = m.init(jax.random.PRNGKey(0), x)
  logits, out = m.apply(v, x)
  np.testing.assert_allclose(logits, (out["logits_cls"] + out["logits_dist"]) / 2, atol=1e-6)
  assert not np.allclose(out["logits_cls"], out["logits_dist"])
  assert v["params"]["pos_embedding"].shape == (1, 2 + 16, 32)


@pytest.mark.parametrize("pool,posemb,fc_norm", [("cls", "learn", False), ("gap", "sincos2d", False),
                                                  ("gap", "learn", True)])
@pytest.mark.slow
def test_variants_run_and_expose_intermediates(pool, posemb, fc_norm):
  m = tiny(pool=pool, posemb=posemb, fc_norm=fc_norm)
  x = jnp.ones((2, 16, 16, 3))
  v = m.init(jax.random.PRNGKey(0), x)
  logits, out = m.apply(v, x)
  assert logits.shape == (2, 5)
  assert out["feature_map"].shape == (2, 4, 4, 32)
  assert out["pre_logits"].shape == (2, 32)
  assert ("cls_token" in v["params"]) == (pool == "cls")
  assert ("pos_embedding" in v["params"]) == (posemb == "learn")


def test_indivisible_input_is_floored():
  """As HF / timm's strided patch conv: 18 px, patch 4 -> a 4x4 grid (the last
  2 rows / columns dropped); tests/test_any_size.py has the HF parity."""
  m = tiny()
  x = jax.random.normal(jax.random.PRNGKey(1), (1, 18, 18, 3))
  v = m.init(jax.random.PRNGKey(0), x)
  a, out = m.apply(v, x)
  assert out["feature_map"].shape[1:3] == (4, 4)
  np.testing.assert_array_equal(a, m.apply(v, x[:, :16, :16])[0])
  with pytest.raises(UserError, match="multiple of 4"):  # smaller than one patch
    m.init(jax.random.PRNGKey(0), jnp.ones((1, 3, 18, 3)))


@pytest.mark.slow
def test_dropout_and_drop_path_only_in_training():
  m = tiny(dropout=0.2, drop_path_rate=0.5, head_zero_init=False)
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 16, 16, 3))
  v = m.init(jax.random.PRNGKey(0), x)
  a, _ = m.apply(v, x)
  b, _ = m.apply(v, x)
  np.testing.assert_array_equal(a, b)
  c, _ = m.apply(v, x, train=True, rngs={"dropout": jax.random.PRNGKey(2)})
  d, _ = m.apply(v, x, train=True, rngs={"dropout": jax.random.PRNGKey(3)})
  assert not np.allclose(c, d)


def test_drop_path_drops_whole_samples_and_keeps_expectation():
  x = jnp.ones((4000, 3, 2))
  y = DropPath(0.25).apply({}, x, deterministic=False, rngs={"dropout": jax.random.PRNGKey(0)})
  per_sample = np.asarray(y).reshape(4000, -1)
  vals = np.unique(per_sample)
  assert np.all(np.isclose(vals, 0.0) | np.isclose(vals, 1 / 0.75))
  assert (per_sample.std(axis=1) == 0).all()
  assert abs(per_sample.mean() - 1.0) < 0.05


@pytest.mark.slow
def test_remat_gives_same_outputs_and_grads():
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 16, 16, 3))
  m1, m2 = tiny(head_zero_init=False), tiny(head_zero_init=False, remat=True)
  v = m1.init(jax.random.PRNGKey(0), x)
  f = lambda m: jax.grad(lambda p: jnp.sum(m.apply({"params": p}, x)[0] ** 2))(v["params"])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), f(m1), f(m2))


def test_sincos_posemb_matches_formula():
  pe = np.asarray(sincos_posemb_2d(3, 4, 8))[0]
  assert pe.shape == (12, 8)
  # token (y=1, x=2): omega = [1, 1/10000]; layout [sin x, cos x, sin y, cos y]
  omega = np.array([1.0, 1e-4])
  want = np.concatenate([np.sin(2 * omega), np.cos(2 * omega), np.sin(1 * omega), np.cos(1 * omega)])
  np.testing.assert_allclose(pe[1 * 4 + 2], want, atol=1e-6)


def test_resample_posemb_keeps_prefix_and_is_exact_for_linear_ramp():
  grid = np.stack(np.meshgrid(np.arange(4.0), np.arange(4.0), indexing="ij"), -1).reshape(1, 16, 2)
  pe = np.concatenate([np.full((1, 1, 2), 7.0), grid], 1)
  new = np.asarray(resample_posemb(pe, (8, 8), num_prefix_tokens=1))
  assert new.shape == (1, 65, 2)
  np.testing.assert_array_equal(new[0, 0], [7.0, 7.0])
  g = new[0, 1:].reshape(8, 8, 2)
  # Interior values of a linear ramp stay linear (half-pixel-centre sampling).
  np.testing.assert_allclose(np.diff(g[2:6, 0, 0]), 0.5, atol=1e-5)
  assert np.all(np.diff(g[:, 0, 0]) >= 0)


@pytest.mark.slow
def test_finetune_at_higher_resolution_with_resampled_posemb():
  m = tiny()
  v = m.init(jax.random.PRNGKey(0), jnp.ones((1, 16, 16, 3)))
  p = dict(v["params"])
  p["pos_embedding"] = resample_posemb(p["pos_embedding"], (8, 8), num_prefix_tokens=1)
  logits, out = m.apply({"params": p}, jnp.ones((2, 32, 32, 3)))
  assert logits.shape == (2, 5) and out["feature_map"].shape == (2, 8, 8, 32)
  with pytest.raises(UserError, match="posemb_interpolate=True.*resample"):
    m.apply(v, jnp.ones((2, 32, 32, 3)))
