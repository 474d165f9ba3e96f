"""Hybrid ViT (R26+S/32, R50+B/16): sizes, outputs, bad inputs, training and
timm weight parity.

timm (imported with the stand-in torchvision, tests/torchvision_stub.py) builds
the reference from its registered names with a shrunk ViT (and backbone
depths), every parameter re-drawn (GroupNorms and LayerNorms included); fp32
logits must agree to 1e-3 (GroupNorm and weight standardization reduce in a
different order than PyTorch).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vitjax.convert.vit_hybrid import timm_vit_hybrid_to_vitjax
from vitjax.errors import UserError
from vitjax.models import create_model
from vitjax.models.vit_hybrid import HybridVisionTransformer
from oracle import count_params, max_abs_diff, randomize

try:
  from torchvision_stub import import_timm
except ImportError:  # tests/ imported as a package
  from tests.torchvision_stub import import_timm

TOL = 1e-3
# timm 1.0's exact counts with a 1000-class head; the timm model cards (millions).
TIMM_COUNTS = {"vit_small_r26_s32_224": 36_431_912, "vit_small_r26_s32_384": 36_468_392,
               "vit_base_r50_s16_224": 98_659_112, "vit_base_r50_s16_384": 98_950_952}
PUBLISHED = {"vit_small_r26_s32_224": 36.4, "vit_small_r26_s32_384": 36.5,
             "vit_base_r50_s16_224": 98.7, "vit_base_r50_s16_384": 99.0}
TINY = dict(image_size=32, stage_depths=(1, 1), stem_width=32, hidden_size=32, depth=1,
            num_heads=2, mlp_dim=64, num_classes=5, head_zero_init=False)

# How `randomize` re-draws the reference: norm scales (LayerNorm, GroupNorm) ~
# 1 + N(0, 0.1), the head ~ N(0, 0.5), everything else (convs, biases, tokens,
# positions) ~ N(0, 0.05).
STYLE = dict(norms=("LayerNorm", "GroupNorm"), wide=("head",))


def count(name):
  m = create_model(name)
  return count_params(m, m.image_size)


@pytest.mark.parametrize("name", sorted(TIMM_COUNTS))
def test_param_counts_match_timm_and_cards(name):
  got = count(name)
  assert got == TIMM_COUNTS[name], (name, got)
  assert abs(got / 1e6 - PUBLISHED[name]) / PUBLISHED[name] < 0.01, (name, got)


@pytest.mark.slow
def test_outputs_and_training():
  m = HybridVisionTransformer(**TINY, drop_path_rate=0.2)
  x = jax.random.normal(jax.random.PRNGKey(0), (8, 32, 32, 3))
  labels = jnp.arange(8) % 5
  params = m.init(jax.random.PRNGKey(1), x)["params"]
  tx = optax.adam(3e-3)

  def loss_fn(p, r):
    logits, _ = m.apply({"params": p}, x, train=True, rngs={"dropout": r})
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  @jax.jit  # one compilation for everything
  def run(params):
    logits, out = m.apply({"params": params}, x)
    def step(carry, r):
      params, opt = carry
      loss, g = jax.value_and_grad(loss_fn)(params, r)
      upd, opt = tx.update(g, opt, params)
      return (optax.apply_updates(params, upd), opt), loss

    _, losses = jax.lax.scan(step, (params, tx.init(params)),
                             jax.random.split(jax.random.PRNGKey(2), 8))
    return logits, out, losses

  logits, out, losses = run(params)
  assert logits.shape == (8, 5)
  assert out["stem"].shape == (8, 8, 8, 32)
  assert out["stage_0"].shape == (8, 8, 8, 256) and out["stage_1"].shape == (8, 4, 4, 512)
  assert out["patch_embed"].shape == (8, 4, 4, 32) and out["feature_map"].shape == (8, 4, 4, 32)
  assert out["encoded"].shape == (8, 17, 32) and out["pre_logits"].shape == (8, 32)
  losses = np.asarray(losses)
  assert np.isfinite(losses).all() and losses[-1] < 0.7 * losses[0], losses


def test_bad_sizes_are_user_errors():
  with pytest.raises(UserError, match=r"stride 16 .*Nearest valid sizes: 224 or 240"):
    create_model("vit_base_r50_s16_224", image_size=230)
  with pytest.raises(UserError, match=r"stride 32 .*Nearest valid sizes: 352 or 384"):
    create_model("vit_small_r26_s32_224", image_size=360)
  m = HybridVisionTransformer(**TINY)
  with pytest.raises(UserError, match=r"input size 36 .*Nearest valid sizes: 32 or 40"):
    m.init(jax.random.PRNGKey(0), jnp.zeros((1, 36, 36, 3)))


# ---------------------------------------------------------------------------
# Parity with timm.

@pytest.fixture(scope="module")
def timm(torch):
  del torch
  return import_timm()


@pytest.mark.parametrize("name,size,heads", [
    ("vit_small_r26_s32_224", 64, 2), ("vit_base_r50_s16_224", 48, 4)])
def test_timm_parity(torch, timm, name, size, heads):
  # The real backbone of each (R26: 2-2-2-2, R50: 3-4-9), a shrunk ViT.
  ref = randomize(timm.create_model(name, img_size=size, embed_dim=32, depth=2,
                                    num_heads=heads, num_classes=7), **STYLE)
  sd = {k: v.numpy() for k, v in ref.state_dict().items()}
  cv = timm_vit_hybrid_to_vitjax(sd, num_heads=heads)
  params, kwargs = cv.params, cv.model_kwargs
  assert kwargs["image_size"] == size
  assert kwargs["stage_depths"] == ((2, 2, 2, 2) if "r26" in name else (3, 4, 9))
  x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
  with torch.no_grad():
    want = ref(x).numpy()
  m = HybridVisionTransformer(**kwargs)
  got = jax.jit(lambda p, x: m.apply({"params": p}, x)[0])(
      params, np.transpose(x.numpy(), (0, 2, 3, 1)))
  diff = max_abs_diff(want, got)
  print(f"\n{name} (ViT shrunk, {size} px): max |logits diff| {diff:.2e}, "
        f"|ref| max {np.abs(want).max():.2f}")
  assert diff <= TOL, diff


def test_timm_named_config_count(torch, timm):
  """The full vit_small_r26_s32_224 as timm builds it (meta device: no memory)."""
  with torch.device("meta"):
    ref = timm.create_model("vit_small_r26_s32_224", num_classes=1000)
  assert sum(p.numel() for p in ref.parameters()) == count("vit_small_r26_s32_224")


def test_converter_errors():
  with pytest.raises(UserError, match="Not a timm hybrid ViT"):
    timm_vit_hybrid_to_vitjax({"patch_embed.proj.weight": np.zeros((4, 3, 16, 16))},
                              num_heads=2)
