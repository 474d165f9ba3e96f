"""NAT / DiNAT: neighborhood attention against natten, bias indexing, gradients
against torch autograd, parameter counts, a short training run, bad inputs.

natten 0.21 runs forward only on CPU and has no relative position bias, so
the attention without bias is compared with `natten.functional.na2d`; the
bias and the gradients are compared with a dense torch reference built here
(test only): its neighbourhood mask is read off natten itself and its bias
index follows natten 0.15's `get_window_start` / `get_pb_start` branches.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vitjax.errors import UserError
from vitjax.models import create_model
from vitjax.models.layers.neighborhood_attention import (neighborhood_attention,
                                                         neighborhood_indices)
from vitjax.models.nat import NAT
from oracle import max_abs_diff

TOL = 1e-5
CASES = [(9, 11, 3, 1), (9, 11, 3, 3), (11, 13, 5, 2), (9, 11, 7, 1),
         (14, 15, 7, 2)]  # (H, W, kernel, dilation)


@pytest.fixture(scope="module")
def na2d(torch):
  natten = pytest.importorskip("natten")
  del natten
  from natten.functional import na2d as fn  # pylint: disable=g-import-not-at-top
  return fn


# ---------------------------------------------------------------------------
# Neighbour / bias indices.

def _natten_window_start(i, length, k, d):
  """natten 0.15's window start (its branches, rewritten)."""
  r = k // 2
  if d <= 1:
    return max(i - r, 0) + (length - i - r - 1 if i + r >= length else 0)
  if i - r * d < 0:
    return i % d
  if i + r * d >= length:
    a = length // d * d
    if i % d < length - a:
      return a + i % d - (k - 1) * d
    return a + i % d - k * d
  return i - r * d


def _natten_pb_start(i, length, k, d):
  """natten 0.15's first bias row of query i (its branches, rewritten)."""
  r = k // 2
  if d <= 1:
    return r + (r - i if i < r else 0) + (length - i - 1 - r if i + r >= length else 0)
  if i - r * d < 0:
    return k - 1 - i // d
  if i + r * d >= length:
    return (length - i - 1) // d
  return r


def test_indices_hand_computed():
  keys, bias = neighborhood_indices(5, 3, 1)
  np.testing.assert_array_equal(keys[[0, 2, 4]], [[0, 1, 2], [1, 2, 3], [2, 3, 4]])
  # Centre row of the 5-row table is 2; the border queries read the outer rows.
  np.testing.assert_array_equal(bias[[0, 2, 4]], [[2, 3, 4], [1, 2, 3], [0, 1, 2]])
  keys, bias = neighborhood_indices(9, 3, 2)  # groups {0,2,4,6,8}, {1,3,5,7}
  np.testing.assert_array_equal(keys[[0, 1, 6, 7, 8]],
                                [[0, 2, 4], [1, 3, 5], [4, 6, 8], [3, 5, 7], [4, 6, 8]])
  np.testing.assert_array_equal(bias[[0, 1, 6, 7, 8]],
                                [[2, 3, 4], [2, 3, 4], [1, 2, 3], [0, 1, 2], [0, 1, 2]])


@pytest.mark.parametrize("length", [7, 9, 11, 16, 23])
def test_indices_match_natten_branches(length):
  for k in (3, 5, 7):
    for d in range(1, length // k + 1):
      keys, bias = neighborhood_indices(length, k, d)
      for i in range(length):
        ws, pb = _natten_window_start(i, length, k, d), _natten_pb_start(i, length, k, d)
        np.testing.assert_array_equal(keys[i], ws + d * np.arange(k), err_msg=f"{k} {d} {i}")
        np.testing.assert_array_equal(bias[i], pb + np.arange(k), err_msg=f"{k} {d} {i}")


# ---------------------------------------------------------------------------
# Against natten (forward) and a dense torch reference (bias, gradients).

def _qkv(h, w, heads=2, dim=8, seed=0):
  rng = np.random.default_rng(seed)
  return [rng.standard_normal((2, h, w, heads, dim)).astype(np.float32) for _ in range(3)]


def _natten_mask(na2d, torch, h, w, k, d):
  """[N, N] bool, True where natten lets query i see key j: zero queries give
  uniform weights, one-hot values read them out."""
  n = h * w
  dim = max(8, 1 << (n - 1).bit_length())  # natten's CPU path: a power of two >= 8
  z = torch.zeros(1, h, w, 1, dim)
  eye = torch.eye(n, dim).reshape(1, h, w, 1, dim)
  weights = na2d(z, z, eye, kernel_size=k, dilation=d).reshape(n, dim)[:, :n].numpy()
  assert np.allclose(weights.sum(-1), 1.0, atol=1e-5)
  return weights > 0.5 / (k * k)


def _dense_bias_index(h, w, k, d):
  """[N, N] rows / cols into the (2k-1)^2 table per natten 0.15 (-1 outside)."""
  def axis(length):
    idx = -np.ones((length, length), np.int64)
    for i in range(length):
      ws, pb = _natten_window_start(i, length, k, d), _natten_pb_start(i, length, k, d)
      for j in range(k):
        idx[i, ws + j * d] = pb + j
    return idx
  ih, iw = axis(h), axis(w)
  rows = ih[:, None, :, None].repeat(w, 1).repeat(w, 3).reshape(h * w, h * w)
  cols = iw[None, :, None, :].repeat(h, 0).repeat(h, 2).reshape(h * w, h * w)
  return rows, cols


@pytest.mark.parametrize("h,w,k,d", CASES)
def test_matches_natten_and_dense_torch(na2d, torch, h, w, k, d):
  """Without bias: output == natten's. With a random bias table: output and
  the gradients of q, k, v, rpb == the dense torch reference's (autograd)."""
  heads, dim = 2, 8
  q, kk, v = _qkv(h, w, heads, dim, seed=1)
  rng = np.random.default_rng(2)
  rpb = rng.standard_normal((heads, 2 * k - 1, 2 * k - 1)).astype(np.float32)
  cot = rng.standard_normal(q.shape).astype(np.float32)

  @jax.jit
  def grads_and_out(q, kk, v, rpb):
    def f(q, kk, v, rpb):
      out = neighborhood_attention(q, kk, v, kernel_size=k, dilation=d, rpb=rpb)
      return (out * cot).sum(), out
    return jax.grad(f, argnums=(0, 1, 2, 3), has_aux=True)(q, kk, v, rpb)

  oracle = na2d(*(torch.tensor(t) for t in (q, kk, v)), kernel_size=k, dilation=d).numpy()
  _, out = grads_and_out(q, kk, v, np.zeros_like(rpb))  # a zero table: no bias
  np.testing.assert_allclose(np.asarray(out), oracle, atol=TOL, rtol=0)

  mask = _natten_mask(na2d, torch, h, w, k, d)
  rows, cols = _dense_bias_index(h, w, k, d)
  assert (((rows >= 0) & (cols >= 0)) == mask).all()  # natten 0.15 and 0.21 agree

  def dense(tq, tk, tv, trpb):
    b, n = tq.shape[0], h * w
    tq, tk, tv = (t.reshape(b, n, heads, dim).transpose(1, 2) for t in (tq, tk, tv))
    logits = tq @ tk.transpose(-1, -2) * dim ** -0.5 + trpb[:, rows.clip(0), cols.clip(0)]
    logits = logits.masked_fill(~torch.tensor(mask), float("-inf"))
    return (logits.softmax(-1) @ tv).transpose(1, 2).reshape(b, h, w, heads, dim)

  tq, tk, tv, trpb = (torch.tensor(t, requires_grad=True) for t in (q, kk, v, rpb))
  plain = dense(tq, tk, tv, torch.zeros_like(trpb)).detach().numpy()
  np.testing.assert_allclose(plain, oracle, atol=TOL, rtol=0)  # the dense oracle is right
  ref = dense(tq, tk, tv, trpb)
  (ref * torch.tensor(cot)).sum().backward()
  grads, out = grads_and_out(q, kk, v, rpb)
  np.testing.assert_allclose(np.asarray(out), ref.detach().numpy(), atol=TOL, rtol=0)
  for g, t in zip(grads, (tq, tk, tv, trpb)):
    np.testing.assert_allclose(np.asarray(g), t.grad.numpy(), atol=TOL, rtol=0)


# ---------------------------------------------------------------------------
# Named sizes.

# Published (NAT Table 1, DiNAT Table 2 / released model cards, in millions)
# and exact counts: DiNAT's equal HF transformers' DinatForImageClassification
# built from the same configs; NAT-S / NAT-B add the layer-scale vectors.
PUBLISHED = {"mini": 20e6, "tiny": 28e6, "small": 51e6, "base": 90e6}
EXACT = {"nat_mini": 19_984_174, "nat_tiny": 27_901_582, "nat_small": 50_743_297,
         "nat_base": 89_769_652, "dinat_mini": 19_984_174, "dinat_tiny": 27_901_582,
         "dinat_small": 50_719_681, "dinat_base": 89_738_164}


@pytest.mark.parametrize("name", sorted(EXACT))
def test_param_counts(name):
  model = create_model(name)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3))))
  n = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes["params"]))
  assert n == EXACT[name]
  assert abs(n / PUBLISHED[name.split("_")[1]] - 1) < 0.01


def test_dinat_dilations_are_the_released_ones():
  assert create_model("dinat_mini").dilations == (
      (1, 8, 1), (1, 4, 1, 4), (1, 2, 1, 2, 1, 2), (1, 1, 1, 1, 1))
  assert create_model("dinat_small").dilations[2] == (1, 2) * 9
  assert create_model("nat_small").layer_scale == 1e-5
  assert create_model("dinat_small").layer_scale == 0.0


# ---------------------------------------------------------------------------
# A tiny DiNAT: outputs, training, bad inputs.

TINY = dict(embed_dim=16, depths=(1, 1), num_heads=(1, 2), kernel_size=3,
            dilations=((2,), (1,)), mlp_ratio=2.0, layer_scale=0.1,
            drop_path_rate=0.1, num_classes=3)


@pytest.mark.slow
def test_tiny_outputs_and_training():
  model = NAT(**TINY)
  x = jax.random.normal(jax.random.PRNGKey(0), (8, 32, 32, 3))
  y = jnp.arange(8) % 3
  logits, out = jax.eval_shape(lambda: model.init_with_output(jax.random.PRNGKey(1), x)[0])
  assert logits.shape == (8, 3)
  assert out["stem"].shape == (8, 8, 8, 16)
  assert out["stage_0"].shape == (8, 8, 8, 16) and out["stage_1"].shape == (8, 4, 4, 32)
  assert out["encoded"].shape == (8, 4, 4, 32) and out["pre_logits"].shape == (8, 32)
  # Random parameters drawn in numpy (a compiled init would double the test's time).
  rng = np.random.default_rng(0)
  params = jax.tree_util.tree_map_with_path(
      lambda path, s: (np.ones(s.shape, np.float32) if path[-1].key == "scale" else
                       0.02 * rng.standard_normal(s.shape).astype(np.float32)),
      jax.eval_shape(model.init, jax.random.PRNGKey(1), x)["params"])
  tx = optax.adam(3e-3)

  @jax.jit
  def step(params, opt, rng):
    def loss_fn(p):
      lg, _ = model.apply({"params": p}, x, train=True, rngs={"dropout": rng})
      return optax.softmax_cross_entropy_with_integer_labels(lg, y).mean()
    loss, g = jax.value_and_grad(loss_fn)(params)
    updates, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, updates), opt, loss

  opt = tx.init(params)
  losses = []
  for i in range(15):
    params, opt, loss = step(params, opt, jax.random.PRNGKey(i))
    losses.append(float(loss))
  assert losses[-1] < 0.5 * losses[0], losses


def test_bad_inputs():
  q = jnp.zeros((1, 9, 11, 1, 4))
  with pytest.raises(UserError, match="odd.*Nearest valid kernel sizes: 3, 5"):
    neighborhood_attention(q, q, q, kernel_size=4)
  with pytest.raises(UserError, match=r"3 \* 4 = 12 is larger than the 9x11.*"
                     r"map side >= 12 or kernel_size <= 1 at dilation 4 or dilation <= 3"):
    neighborhood_attention(q, q, q, kernel_size=3, dilation=4)
  with pytest.raises(UserError, match="dilation must be an integer >= 1"):
    neighborhood_attention(q, q, q, kernel_size=3, dilation=0)
  x = jnp.zeros((1, 16, 16, 3))
  # A map smaller than kernel * dilation is padded per block (HF's maybe_pad;
  # parity in tests/test_any_size.py): 16 px -> 4x4 maps, window 3 * 2 = 6.
  v = jax.eval_shape(NAT(**TINY).init, jax.random.PRNGKey(0), x)
  assert jax.eval_shape(NAT(**TINY).apply, v, x)[1]["stage_0"].shape[1:3] == (4, 4)
  with pytest.raises(UserError, match="odd"):
    NAT(**dict(TINY, kernel_size=4, dilations=None)).init(jax.random.PRNGKey(0), x)
  with pytest.raises(UserError, match="one entry per block"):
    NAT(**dict(TINY, dilations=((1, 1), (1,)))).init(jax.random.PRNGKey(0), x)
  with pytest.raises(UserError, match="not divisible by num_heads"):
    NAT(**dict(TINY, num_heads=(3, 2))).init(jax.random.PRNGKey(0), x)


# ---------------------------------------------------------------------------
# Parity with HF transformers' DiNAT. It calls natten's old (<= 0.16)
# natten2dqkrpb / natten2dav, which natten 0.21 no longer has: they are
# supplied here in torch, following natten 0.15's index branches (above).
# transformers 5.x hands them q / k / v as [B, W, H, heads, d] (a
# `.transpose(1, 2)` where 4.x had `.permute(0, 3, 1, 2, 4)` to natten's
# [B, heads, H, W, d]); the stand-ins undo that, and return natten's layout,
# which HF's `.permute(0, 2, 3, 1, 4)` after natten2dav expects.

def _old_natten_ops(torch):
  def idx(length, k, d):
    keys = [[_natten_window_start(i, length, k, d) + j * d for j in range(k)]
            for i in range(length)]
    bias = [[_natten_pb_start(i, length, k, d) + j for j in range(k)] for i in range(length)]
    return torch.tensor(keys), torch.tensor(bias)

  def neighbours(x, k, d):  # [B, heads, H, W, C] -> [B, heads, H, W, k*k, C]
    (rh, _), (rw, _) = idx(x.shape[2], k, d), idx(x.shape[3], k, d)
    g = x[:, :, rh[:, :, None, None], rw[None, None, :, :]]  # B, heads, H, k, W, k, C
    return g.permute(0, 1, 2, 4, 3, 5, 6).flatten(4, 5)

  def to_natten(x):  # transformers 5.x's [B, W, H, heads, d] -> [B, heads, H, W, d]
    return x.permute(0, 3, 2, 1, 4)

  def qkrpb(q, key, rpb, k, d):
    q, key = to_natten(q), to_natten(key)
    (_, bh), (_, bw) = idx(q.shape[2], k, d), idx(q.shape[3], k, d)
    bias = rpb[:, bh[:, :, None, None], bw[None, None, :, :]].permute(0, 1, 3, 2, 4)
    return (q[..., None, :] * neighbours(key, k, d)).sum(-1) + bias.flatten(3, 4)

  def av(attn, v, k, d):
    return (attn[..., None] * neighbours(to_natten(v), k, d)).sum(-2)
  return qkrpb, av


def dinat_with_torch_kernels(torch, monkeypatch):
  """transformers' DiNAT module running on the torch stand-ins of natten's old
  kernels (skips where natten is not installed)."""
  pytest.importorskip("natten", reason="natten (the DiNAT oracle's kernels) is not installed")
  import natten.functional  # pylint: disable=g-import-not-at-top
  qkrpb, av = _old_natten_ops(torch)
  monkeypatch.setattr(natten.functional, "natten2dqkrpb", qkrpb, raising=False)
  monkeypatch.setattr(natten.functional, "natten2dav", av, raising=False)
  from transformers.models.dinat import modeling_dinat  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(modeling_dinat, "natten2dqkrpb", qkrpb, raising=False)
  monkeypatch.setattr(modeling_dinat, "natten2dav", av, raising=False)
  return modeling_dinat


def test_hf_dinat_parity(torch, transformers, monkeypatch):
  modeling_dinat = dinat_with_torch_kernels(torch, monkeypatch)
  from vitjax.convert.nat import hf_dinat_to_vitjax  # pylint: disable=g-import-not-at-top

  cfg = transformers.DinatConfig(num_labels=5, embed_dim=16, depths=[2, 2], num_heads=[1, 2],
                                 kernel_size=3, dilations=[[1, 3], [1, 1]], mlp_ratio=2.0,
                                 layer_scale_init_value=0.5)
  ref = modeling_dinat.DinatForImageClassification(cfg)
  torch.manual_seed(0)
  with torch.no_grad():  # every parameter re-drawn: LayerNorms ~ 1 + N(0, 0.1), the rest ~ N(0, 0.1)
    for name, p in ref.named_parameters():
      p.normal_(1.0 if ("norm" in name and name.endswith("weight")) else 0.0, 0.1)
  ref.eval()
  x = torch.randn(2, 3, 40, 36, generator=torch.Generator().manual_seed(1))  # maps 10x9, 5x5
  with torch.no_grad():
    want = ref(pixel_values=x).logits.numpy()
  cv = hf_dinat_to_vitjax(ref.state_dict(), cfg)
  variables, kw = cv.variables, cv.model_kwargs
  assert kw["dilations"] == ((1, 3), (1, 1)) and kw["kernel_size"] == 3 and kw["layer_scale"]
  got, _ = jax.jit(NAT(**kw).apply)(variables, jnp.asarray(x.numpy().transpose(0, 2, 3, 1)))
  diff = max_abs_diff(want, got)
  print(f"HF DiNAT parity: max abs logit diff {diff:.2e}")
  assert diff <= 1e-4, diff
  with pytest.raises(UserError, match="Not a HF DiNAT state dict"):
    hf_dinat_to_vitjax({"foo.weight": np.zeros((2, 2))})
