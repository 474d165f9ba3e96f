"""Focal Transformer: focal-window geometry (exact key index sets, hand-derived),
attention against a brute-force loop for one window, stage outputs, a short
training run, bad inputs, and parameter counts / FLOPs against the paper.

No reference implementation is available offline; the geometry and the
attention are checked against what the paper (Sec. 3.2, Fig. 3) and the
released code's shapes define, derived by hand below.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vitjax.errors import UserError
from vitjax.models import create_model
from vitjax.models.focal import FocalTransformer, focal_flops
from vitjax.models.layers import relative_position_index
from vitjax.models.layers.focal_attention import (FocalAttention,
                                                  cross_relative_position_index,
                                                  fine_key_indices,
                                                  pooled_key_indices)
from oracle import n_params

TINY = dict(patch_size=2, embed_dim=16, depths=(1, 1, 1), num_heads=(1, 2, 4), window_size=4,
            focal_levels=(3, 3, 2), focal_windows=(3, 3, 1), expand_sizes=(1, 1, 1),
            num_classes=3)


def random_variables(module, x, seed=0, scale=0.02):
  """Variables of the shapes `module.init` gives, drawn with numpy (LayerNorm
  scales 1, biases 0): much cheaper than compiling the initializers."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), x)

  def draw(path, a):
    name = jax.tree_util.keystr(path)
    if "scale" in name:
      return np.ones(a.shape, np.float32)
    if name.endswith("['bias']"):
      return np.zeros(a.shape, np.float32)
    return (scale * rng.standard_normal(a.shape)).astype(np.float32)
  return jax.tree_util.tree_map_with_path(draw, shapes)


# ---------------------------------------------------------------------------
# Geometry: 8x8 map (flat index 8*y + x), window 2 -> 4x4 windows.

def test_level0_keys_window_and_ring():
  idx = fine_key_indices(8, 8, window_size=2, expand_size=1)
  assert idx.shape == (16, 16)  # 4 own + 12 ring (4x4 square minus the window)
  # Window 0 (rows 0-1, cols 0-1): ring = 4x4 square rows/cols -1..2, row-major.
  np.testing.assert_array_equal(idx[0, :4], [0, 1, 8, 9])
  np.testing.assert_array_equal(idx[0, 4:], [-1, -1, -1, -1, -1, 2, -1, 10, -1, 16, 17, 18])
  # Window 5 = (1, 1): rows/cols 2-3; ring rows/cols 1..4, all inside.
  np.testing.assert_array_equal(idx[5, :4], [18, 19, 26, 27])
  np.testing.assert_array_equal(idx[5, 4:], [9, 10, 11, 12, 17, 20, 25, 28, 33, 34, 35, 36])
  # Window 15 = (3, 3): rows/cols 6-7; only the top / left of the ring is inside.
  assert set(idx[15, 4:]) - {-1} == {45, 46, 47, 53, 61}
  # No expansion: exactly the window.
  np.testing.assert_array_equal(fine_key_indices(8, 8, 2, 0)[5], [18, 19, 26, 27])


def test_pooled_keys_level_by_level():
  # Level 1: 2x2 sub-windows pooled -> 4x4 grid; focal window 3 -> the 3x3
  # pooled tokens centred on the window's own one.
  l1 = pooled_key_indices(4, 4, level=1, focal_window=3)
  assert l1.shape == (16, 9)
  np.testing.assert_array_equal(l1[5], [0, 1, 2, 4, 5, 6, 8, 9, 10])
  np.testing.assert_array_equal(l1[0], [-1, -1, -1, -1, 0, 1, -1, 4, 5])
  # Level 2: sub-windows floor(2/2) = 1 -> 8x8 grid, 2x2 tokens per window;
  # region side 3 + 2 - 1 = 4 starting 1 before the window's block.
  l2 = pooled_key_indices(4, 4, level=2, focal_window=3)
  assert l2.shape == (16, 16)
  np.testing.assert_array_equal(l2[5], [9, 10, 11, 12, 17, 18, 19, 20, 25, 26, 27, 28,
                                        33, 34, 35, 36])
  np.testing.assert_array_equal(l2[0], [-1, -1, -1, -1, -1, 0, 1, 2, -1, 8, 9, 10,
                                        -1, 16, 17, 18])
  # Window 4 on the 8x8 map (2x2 windows), focal window 1: level 1 sees only
  # its own pooled token; level 2 (4x4 grid of 2x2 sub-windows) its own 2x2 block.
  np.testing.assert_array_equal(pooled_key_indices(2, 2, 1, 1)[:, 0], [0, 1, 2, 3])
  np.testing.assert_array_equal(pooled_key_indices(2, 2, 2, 1)[1], [2, 3, 6, 7])


def test_cross_relative_position_index():
  np.testing.assert_array_equal(cross_relative_position_index(3, 3), relative_position_index(3))
  idx = cross_relative_position_index(2, 3)  # table 4x4 rows; offsets dy, dx in [-2, 1]
  assert idx.shape == (4, 9)
  assert idx[0, 0] == 2 * 4 + 2 and idx[3, 0] == 3 * 4 + 3 and idx[0, 8] == 0


# ---------------------------------------------------------------------------
# Attention vs. a brute-force loop for one window.

def _brute_force_window(p, x, wy, wx, m, e, levels, fw, heads):
  """Focal attention output of window (wy, wx), by explicit loops."""
  h, w, c = x.shape
  hd = c // heads
  qkv = x @ p["qkv"]["kernel"] + p["qkv"]["bias"]
  q, k, v = np.split(qkv, 3, axis=-1)
  ring = p.get("relative_position_bias_table_to_neighbors")
  table0 = p["relative_position_bias_table"]
  keys = []  # (k vector, v vector, bias per query token [m*m, heads])
  n_ring = 0
  for dy in range(-e, m + e):
    for dx in range(-e, m + e):
      y, xx = wy * m + dy, wx * m + dx
      own = 0 <= dy < m and 0 <= dx < m
      bias = np.zeros((m * m, heads))
      for qi in range(m * m):
        qy, qx = divmod(qi, m)
        bias[qi] = (table0[(qy - dy + m - 1) * (2 * m - 1) + qx - dx + m - 1] if own
                    else ring[qi, n_ring])
      n_ring += not own
      if 0 <= y < h and 0 <= xx < w:
        keys.append((k[y, xx], v[y, xx], bias))
  for level in range(1, levels):
    step = 2 ** (level - 1)
    s = m // step
    gh, gw = (h // m) * step, (w // m) * step
    top, left = (h - gh * s) // 2, (w - gw * s) // 2
    kern, b0 = p[f"pool_{level}_kernel"], p[f"pool_{level}_bias"]
    pooled = np.zeros((gh, gw, c))
    for gy in range(gh):
      for gx in range(gw):
        for a in range(s):
          for bb in range(s):
            pooled[gy, gx] += x[top + gy * s + a, left + gx * s + bb] * kern[a * s + bb]
        pooled[gy, gx] += b0
    _, kp, vp = np.split(pooled @ p["qkv"]["kernel"] + p["qkv"]["bias"], 3, axis=-1)
    r = fw + step - 1
    table = p[f"relative_position_bias_table_to_windows_{level}"]
    for ky in range(r):
      for kx in range(r):
        gy, gx = wy * step - (fw - 1) // 2 + ky, wx * step - (fw - 1) // 2 + kx
        if not (0 <= gy < gh and 0 <= gx < gw):
          continue
        bias = np.zeros((m * m, heads))
        for qi in range(m * m):
          qy, qx = divmod(qi, m)
          bias[qi] = table[(qy - ky + r - 1) * (m + r - 1) + qx - kx + r - 1]
        keys.append((kp[gy, gx], vp[gy, gx], bias))
  out = np.zeros((m * m, c))
  for qi in range(m * m):
    qy, qx = divmod(qi, m)
    qv = q[wy * m + qy, wx * m + qx]
    for hh in range(heads):
      sl = slice(hh * hd, (hh + 1) * hd)
      logits = np.array([qv[sl] @ kk[sl] / np.sqrt(hd) + bias[qi, hh] for kk, _, bias in keys])
      a = np.exp(logits - logits.max())
      a /= a.sum()
      out[qi, sl] = sum(ai * vv[sl] for ai, (_, vv, _) in zip(a, keys))
  return out @ p["proj"]["kernel"] + p["proj"]["bias"]


@pytest.mark.parametrize("wy,wx", [(1, 0), (0, 1)])
def test_attention_matches_brute_force(wy, wx):
  """6x6 map, window 3, ring 1, 3 levels, focal window 3: level 1 pools 3x3
  sub-windows (2x2 grid), level 2 pools 1x1 sub-windows of the map trimmed
  to its centre 4x4 (one row / column cut on each side)."""
  m, e, levels, fw, heads, c = 3, 1, 3, 3, 2, 8
  mod = FocalAttention(heads, m, e, levels, fw)
  x = np.random.default_rng(0).standard_normal((1, 6, 6, c)).astype(np.float32)
  # Every parameter drawn at random (pool weights and biases included).
  rng = np.random.default_rng(1)
  params = jax.tree_util.tree_map(
      lambda a: (0.5 * rng.standard_normal(a.shape)).astype(np.float32),
      jax.eval_shape(mod.init, jax.random.PRNGKey(0), x)["params"])
  got = np.asarray(mod.apply({"params": params}, x))[0]
  p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
  want = _brute_force_window(p, np.asarray(x[0], np.float64), wy, wx, m, e, levels, fw, heads)
  np.testing.assert_allclose(got[wy * m:(wy + 1) * m, wx * m:(wx + 1) * m].reshape(-1, c),
                             want, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------
# Model: stages, training, bad inputs.

@pytest.mark.slow
def test_stages_flops_and_drop_path():
  m = FocalTransformer(**dict(TINY, embed_dim=64), drop_path_rate=0.3)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 32, 32, 3))
  variables = random_variables(m, x)
  compiled = jax.jit(m.apply).lower(variables, x).compile()
  # The analytic multiply-add count equals XLA's flop count / 2 up to the
  # element-wise work (norms, softmax, GELU, bias adds) it leaves out.
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  macs = 2 * focal_flops(m, 32)  # batch 2
  print("analytic MACs", macs, "XLA flops / 2", cost["flops"] / 2)
  assert macs <= cost["flops"] / 2 <= 1.15 * macs, (macs, cost["flops"] / 2)
  logits, out = compiled(variables, x)
  assert logits.shape == (2, 3)
  assert out["stem"].shape == (2, 16, 16, 64)
  assert out["stage_0"].shape == (2, 16, 16, 64)    # 4x4 windows of 4, ring 1
  assert out["stage_1"].shape == (2, 8, 8, 128)     # 2x2 windows
  assert out["stage_2"].shape == (2, 4, 4, 256)     # one window, no ring (clamped)
  assert out["encoded"].shape == (2, 4, 4, 256) and out["pre_logits"].shape == (2, 256)
  p = variables["params"]
  assert "relative_position_bias_table_to_neighbors" not in p["stage_2_block_0"]["attn"]
  assert p["stage_0_block_0"]["attn"]["pool_2_kernel"].shape == (4,)  # 2x2 sub-windows
  train_fn = jax.jit(lambda v, x, r: m.apply(v, x, train=True, rngs={"dropout": r})[0])
  a, b = (train_fn(variables, x, jax.random.PRNGKey(s)) for s in (0, 1))
  assert not np.allclose(a, b)  # stochastic depth is active


def test_tiny_model_trains():
  m = FocalTransformer(**dict(TINY, depths=(1,), num_heads=(2,), window_size=2,
                              focal_levels=(2,), focal_windows=(3,), expand_sizes=(1,)),
                       drop_path_rate=0.0)
  x = jax.random.normal(jax.random.PRNGKey(0), (8, 8, 8, 3))
  y = jnp.arange(8) % 3
  params = random_variables(m, x, scale=0.1)["params"]
  tx = optax.adam(1e-2)
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    def loss_fn(p):
      logits, _ = m.apply({"params": p}, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    loss, g = jax.value_and_grad(loss_fn)(params)
    updates, state = tx.update(g, state, params)
    return optax.apply_updates(params, updates), state, loss

  losses = []
  for _ in range(6):
    params, state, loss = step(params, state)
    losses.append(float(loss))
  assert np.isfinite(losses).all() and losses[-1] < 0.8 * losses[0], losses
  assert all(b < a for a, b in zip(losses, losses[1:])), losses


def test_bad_inputs_are_user_errors():
  m = FocalTransformer(**TINY)
  # 30 -> 15x15 map, not divisible by window 4; valid: 16 (clamped later stages) or 32.
  with pytest.raises(UserError, match=r"patch \* window \* 2\^\(stages-1\) = 32.*15x15 "
                                      r"feature map, not divisible by the window 4.*"
                                      r"Nearest valid sizes: 16 or 32"):
    m.init(jax.random.PRNGKey(0), jnp.zeros((1, 30, 30, 3)))
  with pytest.raises(UserError, match=r"not divisible by the patch size 2.*Nearest valid sizes: 32 or 64"):
    m.init(jax.random.PRNGKey(0), jnp.zeros((1, 33, 32, 3)))
  with pytest.raises(UserError, match=r"focal_window 2 must be odd.*use 1 or 3"):
    FocalTransformer(**dict(TINY, focal_windows=(3, 2, 1))).init(
        jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
  with pytest.raises(UserError, match=r"focal_level 5 .*use a focal_level in 1..4"):
    FocalTransformer(**dict(TINY, focal_levels=(5, 2, 2))).init(
        jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
  with pytest.raises(UserError, match=r"expand_sizes=\(1, 1\) must have one entry per stage"):
    FocalTransformer(**dict(TINY, expand_sizes=(1, 1))).init(
        jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))


# ---------------------------------------------------------------------------
# Named sizes against the paper (Yang et al. 2021, Table 2: 224x224).

PAPER = {"focal_tiny_srf": (29.1, 4.9), "focal_small_srf": (51.1, 9.1),
         "focal_base_srf": (89.8, 16.0)}
# The released checkpoints' README (same architecture): 28.9M / 4.9G,
# 51.1M / 9.4G, 89.8M / 16.4G. The paper's S / B FLOPs (9.1G, 16.0G) are 3.6% /
# 2.3% below what the released architecture computes (9.43G / 16.36G
# multiply-adds, counted here and by the released code's own formula).
README_GFLOPS = {"focal_tiny_srf": 4.9, "focal_small_srf": 9.4, "focal_base_srf": 16.4}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_params_and_flops_match_published(name):
  want_params, want_gflops = PAPER[name]
  m = create_model(name)
  shapes = jax.eval_shape(lambda x: m.init(jax.random.PRNGKey(0), x),
                          jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))
  got = n_params(shapes["params"]) / 1e6
  assert abs(got - want_params) / want_params < 0.01, (name, got, want_params)
  gmacs = focal_flops(m, 224) / 1e9
  assert abs(gmacs - README_GFLOPS[name]) / README_GFLOPS[name] < 0.01, (name, gmacs)
  if name == "focal_tiny_srf":
    assert abs(gmacs - want_gflops) / want_gflops < 0.01, (name, gmacs)
  # lrf: one more pooled level, a few hundred parameters per block.
  lrf = create_model(name.replace("srf", "lrf"))
  assert 0 < focal_flops(lrf, 224) - focal_flops(m, 224) < 0.05 * focal_flops(m, 224)
