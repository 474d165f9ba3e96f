"""CrossViT: sizes, outputs, bad inputs, training, and timm weight parity.

timm (imported with the stand-in torchvision, tests/torchvision_stub.py) builds
the reference from its registered names with shrunk widths / depths and every
parameter re-drawn (LayerNorms included); fp32 logits must agree to 1e-4.
The 240 px input exercises the large branch's bicubic resize to 224 px.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vitjax.convert.crossvit import timm_crossvit_to_vitjax
from vitjax.errors import UserError
from vitjax.models import create_model
from vitjax.models.crossvit import CrossViT
from vitjax.models.layers import bicubic_resize_matrix
from oracle import count_params, max_abs_diff, randomize

try:
  from torchvision_stub import import_timm
except ImportError:  # tests/ imported as a package
  from tests.torchvision_stub import import_timm

TOL = 1e-4
# timm 1.0's exact counts (1000 classes); the paper's Tables 1-2 (millions).
TIMM_COUNTS = {
    "crossvit_tiny_240": 7_014_800, "crossvit_small_240": 26_856_272,
    "crossvit_base_240": 105_025_232, "crossvit_9_240": 8_553_296,
    "crossvit_15_240": 27_528_464, "crossvit_18_240": 43_271_408,
    "crossvit_9_dagger_240": 8_776_592, "crossvit_15_dagger_240": 28_209_008,
    "crossvit_18_dagger_240": 44_266_976}
PUBLISHED = {"crossvit_tiny_240": 7.0, "crossvit_small_240": 26.7, "crossvit_base_240": 104.7,
             "crossvit_9_240": 8.6, "crossvit_15_240": 27.4, "crossvit_18_240": 43.3,
             "crossvit_9_dagger_240": 8.8, "crossvit_15_dagger_240": 28.2,
             "crossvit_18_dagger_240": 44.3}
TINY = dict(image_size=24, img_scale=(1.0, 0.5), patch_sizes=(3, 3), embed_dims=(16, 32),
            num_heads=(2, 2), mlp_ratios=(2.0, 2.0), num_blocks=1, branch_depths=(1, 2),
            num_classes=5)

# How `randomize` re-draws the reference: LayerNorm scales ~ 1 + N(0, 0.1), heads ~
# N(0, 0.5), everything else (biases, convs, tokens, position embeddings) ~ N(0, 0.05).
STYLE = dict(wide=("head",))


@pytest.mark.parametrize("name", sorted(TIMM_COUNTS))
def test_param_counts_match_timm_and_paper(name):
  got = count_params(name, 240)
  assert got == TIMM_COUNTS[name], (name, got)
  assert abs(got / 1e6 - PUBLISHED[name]) / PUBLISHED[name] < 0.01, (name, got)


def test_resize_matrix_rows_sum_to_one():
  m = bicubic_resize_matrix(240, 224)
  np.testing.assert_allclose(m.sum(1), 1.0, atol=1e-6)
  assert m.shape == (224, 240)


@pytest.mark.slow
def test_outputs_drop_path_and_training():
  m = CrossViT(**TINY, drop_path_rate=0.3)
  x = jax.random.normal(jax.random.PRNGKey(0), (8, 24, 24, 3))
  labels = jnp.arange(8) % 5
  tx = optax.adam(3e-3)

  def loss_fn(p, r):
    logits, _ = m.apply({"params": p}, x, train=True, rngs={"dropout": r})
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  def step(carry, r):
    params, opt = carry
    loss, g = jax.value_and_grad(loss_fn)(params, r)
    upd, opt = tx.update(g, opt, params)
    return (optax.apply_updates(params, upd), opt), loss

  @jax.jit  # one compilation for everything
  def run(x):
    params = m.init(jax.random.PRNGKey(1), x)["params"]
    logits, out = m.apply({"params": params}, x)
    f = lambda r: m.apply({"params": params}, x, train=True,
                          rngs={"dropout": jax.random.PRNGKey(r)})[0]
    _, losses = jax.lax.scan(step, (params, tx.init(params)),
                             jax.random.split(jax.random.PRNGKey(2), 8))
    return logits, out, f(0), f(1), losses

  logits, out, train0, train1, losses = run(x)
  assert logits.shape == (8, 5)
  assert out["stem"].shape == (8, 8, 8, 16) and out["stem_b1"].shape == (8, 4, 4, 32)
  assert out["stage_0"].shape == (8, 8, 8, 16) and out["stage_0_b1"].shape == (8, 4, 4, 32)
  assert out["encoded"].shape == (8, 65, 16) and out["encoded_b1"].shape == (8, 17, 32)
  assert out["pre_logits"].shape == (8, 48)
  np.testing.assert_allclose((out["logits_0"] + out["logits_1"]) / 2, logits, atol=1e-6)
  assert not np.allclose(train0, train1)  # stochastic depth is active
  losses = np.asarray(losses)
  assert np.isfinite(losses).all() and losses[-1] < 0.7 * losses[0], losses


def test_bad_sizes_are_user_errors():
  with pytest.raises(UserError, match=r"Nearest valid sizes: 240 or 360"):
    create_model("crossvit_tiny_240", image_size=250)
  with pytest.raises(UserError, match=r"Nearest valid sizes: 24 or 30"):
    CrossViT(**dict(TINY, image_size=26))  # 26 / 13 are not multiples of 3
  with pytest.raises(UserError, match=r"patch sizes 12 and 16"):
    CrossViT(**dict(TINY, multi_conv=True))
  with pytest.raises(UserError, match=r"one entry per branch"):
    CrossViT(**dict(TINY, num_heads=(2,)))
  m = CrossViT(**TINY)
  with pytest.raises(UserError, match=r"built for 24x24"):
    m.init(jax.random.PRNGKey(0), jnp.zeros((1, 30, 30, 3)))


# ---------------------------------------------------------------------------
# Parity with timm.

@pytest.fixture(scope="module")
def timm(torch):
  del torch
  return import_timm()


@pytest.mark.parametrize("name,kw,heads", [
    ("crossvit_tiny_240", dict(embed_dim=[16, 32], depth=[[1, 2, 0], [1, 2, 0]],
                               num_heads=[2, 4], mlp_ratio=[2, 3, 1], num_classes=7), (2, 4)),
    ("crossvit_9_dagger_240", dict(embed_dim=[16, 32], depth=[[1, 1, 0]], num_heads=[2, 2],
                                   num_classes=7), 2),
])
def test_timm_parity(torch, timm, name, kw, heads):
  ref = randomize(timm.create_model(name, **kw), **STYLE)
  sd = {k: v.numpy() for k, v in ref.state_dict().items()}
  cv = timm_crossvit_to_vitjax(sd, num_heads=heads)
  params, kwargs = cv.params, cv.model_kwargs
  assert kwargs["multi_conv"] == ("dagger" in name)
  x = torch.randn(2, 3, 240, 240, generator=torch.Generator().manual_seed(1))
  with torch.no_grad():
    want = ref(x).numpy()
  m = CrossViT(**kwargs)
  got = jax.jit(lambda p, x: m.apply({"params": p}, x)[0])(
      params, np.transpose(x.numpy(), (0, 2, 3, 1)))
  diff = max_abs_diff(want, got)
  print(f"\n{name} (shrunk): max |logits diff| {diff:.2e}, |ref| max {np.abs(want).max():.2f}")
  assert diff <= TOL, diff


def test_timm_named_config_count(torch, timm):
  """The full crossvit_9_dagger_240 as timm builds it (meta device: no memory)."""
  with torch.device("meta"):
    ref = timm.create_model("crossvit_9_dagger_240")
  assert sum(p.numel() for p in ref.parameters()) == count_params("crossvit_9_dagger_240", 240)


def test_converter_errors():
  with pytest.raises(UserError, match="Not a timm CrossViT"):
    timm_crossvit_to_vitjax({"foo": np.zeros(3)}, num_heads=2)
