"""MobileViT v1 / v2: Hugging Face parity, published parameter counts, bad sizes.

Reference models are built offline from small transformers configs with
every parameter and BatchNorm running statistic re-drawn (`randomize`), and
compared in eval mode on 64x64 inputs.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vitjax.convert.mobilevit import hf_mobilevit_to_vitjax, hf_mobilevitv2_to_vitjax
from vitjax.errors import UserError
from vitjax.models import create_model, list_models
from vitjax.models.mobilevit import MobileViT, MobileViTV2, fold, unfold
from oracle import assert_close, count_params, randomize

# How `randomize` re-draws the references: weights ~ N(0, 1/fan_in), norm scales
# ~ 1 + N(0, 0.1), other vectors ~ N(0, 0.1), BN running means ~ N(0, 0.2),
# running variances ~ U(0.5, 1.5).
STYLE = dict(norms=("BatchNorm2d", "LayerNorm", "GroupNorm"), fan_in=True, std=0.1,
             bn_mean_std=0.2)


def images(torch, h, w, seed=1):
  x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(seed))
  return x, np.transpose(x.numpy(), (0, 2, 3, 1))


def run(model_cls, variables, kwargs, x_nhwc):
  model = model_cls(**kwargs)
  logits, out = jax.jit(lambda v, x: model.apply(v, x))(variables, x_nhwc)
  return np.asarray(logits), out


# ---------------------------------------------------------------------------
# v1.

def test_unfold_fold_roundtrip():
  x = np.arange(2 * 4 * 6 * 3, dtype=np.float32).reshape(2, 4, 6, 3)
  t = unfold(x, 2)
  assert t.shape == (2 * 4, 6, 3)
  # Sequence 1 of image 0 is pixel (0, 1) of every 2x2 patch.
  np.testing.assert_array_equal(t[1, :, 0], x[0, 0::2, 1::2, 0].reshape(-1))
  np.testing.assert_array_equal(fold(t, 2, 2, 4, 6), x)


@pytest.mark.parametrize("case", ["classifier", "bare"])
@pytest.mark.slow
def test_hf_mobilevit_parity(torch, transformers, case):
  """A tiny classifier (expansion 2, 2 heads, depths from HF's fixed 2/4/3)
  and a bare MobileViTModel with other widths and mlp ratio, at 64x64."""
  if case == "classifier":
    cfg = transformers.MobileViTConfig(
        hidden_sizes=[16, 24, 32], neck_hidden_sizes=[8, 8, 16, 16, 24, 24, 48],
        num_attention_heads=2, expand_ratio=2.0, num_labels=5)
    ref = transformers.MobileViTForImageClassification(cfg)
  else:
    cfg = transformers.MobileViTConfig(
        hidden_sizes=[16, 16, 24], neck_hidden_sizes=[8, 16, 16, 24, 24, 32, 40],
        num_attention_heads=4, mlp_ratio=1.5, expand_ratio=4.0)
    ref = transformers.MobileViTModel(cfg)
  ref = randomize(ref, **STYLE)
  cv = hf_mobilevit_to_vitjax(ref.state_dict(), cfg)
  variables, kw = cv.variables, cv.model_kwargs
  x, x_nhwc = images(torch, 64, 64)
  with torch.no_grad():
    r = ref(pixel_values=x)
  want = r.logits if case == "classifier" else r.pooler_output
  got, out = run(MobileViT, variables, kw, x_nhwc)
  assert_close(f"hf MobileViT {case}", want.numpy(), got, 1e-3)
  assert kw["depths"] == (2, 4, 3)
  assert out["stage_4"].shape == (2, 2, 2, cfg.neck_hidden_sizes[5])
  assert out["pre_logits"].shape == (2, cfg.neck_hidden_sizes[6])


@pytest.mark.parametrize("name,published", [
    ("mobilevit_xxs", 1.3e6), ("mobilevit_xs", 2.3e6), ("mobilevit_s", 5.6e6)])
def test_mobilevit_param_counts(name, published):
  # Published counts are rounded to 0.1M (XXS has 1.27M, as HF's and timm's
  # checkpoints: 2.2% under 1.3M); XS and S are within 1% as well.
  n = count_params(name, 256)
  assert round(n / 1e5) == round(published / 1e5), n
  if name != "mobilevit_xxs":
    assert n == pytest.approx(published, rel=0.01)


def test_mobilevit_registered_and_bad_inputs():
  assert {"mobilevit_xxs", "mobilevit_xs", "mobilevit_s"} <= set(list_models("mobilevit_*"))
  m = create_model("mobilevit_xxs", num_classes=3)
  # Any size, resized to whole patches in each block as HF (tests/test_any_size.py).
  v = jax.eval_shape(lambda x: m.init(jax.random.PRNGKey(0), x),
                     jax.ShapeDtypeStruct((1, 100, 64, 3), jnp.float32))
  assert jax.eval_shape(m.apply, v, jnp.zeros((1, 100, 64, 3)))[0].shape == (1, 3)
  with pytest.raises(UserError, match="num_heads"):
    create_model("mobilevit_xs", num_heads=7)
  with pytest.raises(UserError, match="7 positive"):
    create_model("mobilevit_s", widths=(16, 32))
  with pytest.raises(UserError, match="config="):
    hf_mobilevit_to_vitjax({"x": np.zeros(1)}, None)


# ---------------------------------------------------------------------------
# v2.

@pytest.mark.parametrize("case", ["classifier", "bare"])
def test_hf_mobilevitv2_parity(torch, transformers, case):
  """Width x0.25 classifier with depths (1, 2, 1); and a bare MobileViTV2Model
  at x0.3 (non-multiple widths rounded), FFN multiplier 3 (FFN widths
  floored to multiples of 16) and expansion 3, at 64x64."""
  if case == "classifier":
    cfg = transformers.MobileViTV2Config(width_multiplier=0.25, n_attn_blocks=[1, 2, 1],
                                         num_labels=5)
    ref = transformers.MobileViTV2ForImageClassification(cfg)
  else:
    cfg = transformers.MobileViTV2Config(width_multiplier=0.3, n_attn_blocks=[1, 1, 2],
                                         ffn_multiplier=3, expand_ratio=3.0)
    ref = transformers.MobileViTV2Model(cfg)
  ref = randomize(ref, **STYLE)
  cv = hf_mobilevitv2_to_vitjax(ref.state_dict(), cfg)
  variables, kw = cv.variables, cv.model_kwargs
  x, x_nhwc = images(torch, 64, 64)
  with torch.no_grad():
    r = ref(pixel_values=x)
  want = r.logits if case == "classifier" else r.pooler_output
  got, out = run(MobileViTV2, variables, kw, x_nhwc)
  assert_close(f"hf MobileViTV2 {case}", want.numpy(), got, 1e-3)
  assert kw["depths"] == tuple(cfg.n_attn_blocks)
  assert out["stage_4"].shape[:3] == (2, 2, 2)


def test_separable_attention_is_linear_and_permutation_equivariant():
  """No N x N matrix: the context vector is shared by all patches, so
  permuting the patches permutes the output the same way."""
  from vitjax.models.mobilevit import SeparableSelfAttention  # pylint: disable=g-import-not-at-top
  m = SeparableSelfAttention()
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 4, 7, 8))
  v = m.init(jax.random.PRNGKey(1), x)
  y, state = m.apply(v, x, mutable=["intermediates"])
  scores = state["intermediates"]["context_scores"][0]
  assert scores.shape == (1, 4, 7, 1)
  np.testing.assert_allclose(np.sum(scores, axis=2), 1.0, rtol=1e-6)
  perm = np.array([3, 0, 6, 1, 5, 2, 4])
  np.testing.assert_allclose(m.apply(v, x[:, :, perm]), y[:, :, perm], atol=1e-5)


@pytest.mark.parametrize("name,published", [
    ("mobilevitv2_050", 1.4e6), ("mobilevitv2_075", 2.9e6), ("mobilevitv2_100", 4.9e6),
    ("mobilevitv2_125", 7.5e6), ("mobilevitv2_150", 10.6e6), ("mobilevitv2_175", 14.3e6),
    ("mobilevitv2_200", 18.4e6)])
def test_mobilevitv2_param_counts(name, published):
  # Published counts are rounded to 0.1M (x0.5 has 1.37M, x0.75 2.87M, as in
  # the reference checkpoints); the others are within 1%.
  n = count_params(name, 256)
  assert round(n / 1e5) == round(published / 1e5), n
  if name not in ("mobilevitv2_050", "mobilevitv2_075"):
    assert n == pytest.approx(published, rel=0.01)


def test_mobilevitv2_bad_inputs():
  names = set(list_models("mobilevitv2_*"))
  assert names == {f"mobilevitv2_{k}" for k in ("050", "075", "100", "125", "150", "175", "200")}
  with pytest.raises(UserError, match=r"width_mult=0.0.*nearest: 0.5"):
    create_model("mobilevitv2_100", width_mult=0.0)
  with pytest.raises(UserError, match=r"width_mult=-1.*nearest: 0.5"):
    create_model("mobilevitv2_100", width_mult=-1)
  with pytest.raises(UserError, match=r"width_mult='1'"):
    create_model("mobilevitv2_100", width_mult="1")
  m = create_model("mobilevitv2_050", num_classes=3)
  v = jax.eval_shape(lambda x: m.init(jax.random.PRNGKey(0), x),
                     jax.ShapeDtypeStruct((1, 224, 64, 3), jnp.float32))
  assert jax.eval_shape(m.apply, v, jnp.zeros((1, 224, 64, 3)))[0].shape == (1, 3)
  with pytest.raises(UserError, match="depths"):
    create_model("mobilevitv2_050", depths=(2, 4))
  with pytest.raises(UserError, match="config="):
    hf_mobilevitv2_to_vitjax({"x": np.zeros(1)}, None)


@pytest.mark.slow
def test_train_mode_updates_batch_stats():
  """train=True on a tiny v2 (the v1 blocks are shared): BatchNorm statistics
  move, dropout / drop path make outputs depend on the rng. Parameters are
  drawn with numpy from the init shapes (no init compile)."""
  m = MobileViTV2(num_classes=3, width_mult=0.25, depths=(1, 1, 1), drop_path_rate=0.5)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 64, 64, 3))
  shapes = jax.eval_shape(m.init, jax.random.PRNGKey(0), x)
  rng = np.random.default_rng(0)
  v = jax.tree_util.tree_map(
      lambda s: (rng.normal(size=s.shape) / np.sqrt(max(1, np.prod(s.shape[:-1])))
                 ).astype(np.float32), shapes)

  @jax.jit
  def step(v, key):
    (logits, _), state = m.apply(v, x, train=True, mutable=["batch_stats"],
                                 rngs={"dropout": key})
    return logits, state

  a, state = step(v, jax.random.PRNGKey(1))
  b, _ = step(v, jax.random.PRNGKey(2))
  assert np.all(np.isfinite(np.asarray(a))) and not np.allclose(a, b)
  old = jax.tree_util.tree_leaves(v["batch_stats"])
  new = jax.tree_util.tree_leaves(state["batch_stats"])
  assert len(old) == len(new) > 0
  assert all(not np.allclose(p, q) for p, q in zip(old, new))
