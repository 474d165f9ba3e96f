"""LV-ViT and token labeling: sizes and FLOPs against the paper / official
code, the residual-scaling identity, MixToken and the token-labeling loss on
hand-computed cases, training from a tiny teacher checkpoint, bad inputs.

FLOPs here are multiply-accumulates (the paper's "FLOPs"), counted exactly
from the model's jaxpr: every dot_general and convolution (attention
matmuls, stem convs and both heads included; elementwise ops not counted).
"""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from jax.extend.core import jaxprs_in_params

from vitjax import checkpoint as ckpt_lib
from vitjax.config import default_config
from vitjax.errors import UserError
from vitjax.models import create_model
from vitjax.models.layers import Attention, Mlp
from vitjax.models.lvvit import LVViT, box_lam, mix_tokens, rand_token_box
from vitjax.models.vit import EncoderBlock
from vitjax.tasks import get_task
from vitjax.tasks.token_labeling import (dense_targets_from_scores, mix_targets,
                                         token_labeling_loss)

# Params: official README (TokenLabeling, both heads, 1000 classes, 224).
# GMACs: LV-ViT-S 6.6 (paper's comparison table); LV-ViT-M 12.7 (DynamicViT,
# Rao et al. 2021, Table 1 baseline; the official flops() formula gives 12.74);
# LV-ViT-T 2.87 (the official repository's flops() formula, no paper figure).
PUBLISHED = {"lvvit_t": (8.53, 2.87), "lvvit_s": (26.15, 6.6), "lvvit_m": (55.83, 12.7)}
TINY = dict(num_classes=3, image_size=16, patch_size=4, stem_dim=8, hidden_size=16, depth=1,
            num_heads=2)


def count_macs(jaxpr) -> int:
  """Multiply-accumulates of every dot_general / convolution in a jaxpr."""
  total = 0
  for eq in jaxpr.eqns:
    out = int(np.prod(eq.outvars[0].aval.shape)) if eq.outvars else 0
    if eq.primitive.name == "dot_general":
      (contract, _), _ = eq.params["dimension_numbers"]
      lhs = eq.invars[0].aval.shape
      total += out * int(np.prod([lhs[i] for i in contract]))
    elif eq.primitive.name == "conv_general_dilated":
      rhs = eq.invars[1].aval.shape
      total += out * int(np.prod(rhs)) // rhs[eq.params["dimension_numbers"].rhs_spec[0]]
    for sub in jaxprs_in_params(eq.params):
      total += count_macs(sub)
  return total


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_params_and_flops_match_published(name):
  m = create_model(name)
  x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: m.init(jax.random.PRNGKey(0), x), x)
  n = sum(int(np.prod(v.shape)) for v in jax.tree_util.tree_leaves(variables["params"]))
  gmacs = count_macs(jax.make_jaxpr(lambda v, x: m.apply(v, x))(variables, x).jaxpr) / 1e9
  want_params, want_gmacs = PUBLISHED[name]
  print(name, "params", n, "GMACs", gmacs)
  assert abs(n / 1e6 - want_params) / want_params < 0.01, (name, n)
  assert abs(gmacs - want_gmacs) / want_gmacs < 0.01, (name, gmacs)


def test_skip_lam_block_is_scaled_residual():
  """vit.EncoderBlock(eps lam^2)(lam x) / lam == x + F(LN(x)) / lam, both branches."""
  lam, eps = 2.0, 1e-5
  block = EncoderBlock(2, 16, qkv_bias=False, layer_norm_eps=eps * lam ** 2)

  def ln(v, q):
    mu, var = v.mean(-1, keepdims=True), v.var(-1, keepdims=True)
    return (v - mu) / jnp.sqrt(var + eps) * q["scale"] + q["bias"]

  @jax.jit
  def both(x):
    p = block.init(jax.random.PRNGKey(1), x)["params"]
    p = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.PRNGKey(2), a.shape), p)
    y = x + Attention(2, qkv_bias=False).apply({"params": p["attn"]}, ln(x, p["norm1"])) / lam
    y = y + Mlp(16).apply({"params": p["mlp"]}, ln(y, p["norm2"])) / lam
    return block.apply({"params": p}, lam * x) / lam, y
  got, want = both(jax.random.normal(jax.random.PRNGKey(0), (2, 5, 8)))
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_mixtoken_and_loss_hand_computed():
  # 2 images, 2x2 tokens, 3 classes, box = top-left token.
  grid = np.arange(2 * 2 * 2 * 1, dtype=np.float32).reshape(2, 2, 2, 1)  # [B, h, w, C]
  box = (0, 0, 1, 1)
  mixed = np.asarray(mix_tokens(jnp.asarray(grid), box))
  want = grid.copy()
  want[0, 0, 0], want[1, 0, 0] = grid[1, 0, 0], grid[0, 0, 0]
  np.testing.assert_array_equal(mixed, want)
  np.testing.assert_array_equal(mix_tokens(jnp.asarray(mixed), box), grid)  # swap back
  lam = float(box_lam(box, 2, 2))
  assert lam == 0.75
  y = np.eye(3, dtype=np.float32)[[0, 2]]
  cls_t = np.asarray(mix_targets(jnp.asarray(y), lam))
  np.testing.assert_allclose(cls_t, [[0.75, 0, 0.25], [0.25, 0, 0.75]])

  logits_cls = np.array([[2.0, 0.0, -1.0], [0.5, 0.5, 1.0]], np.float32)
  tok = np.arange(2 * 4 * 3, dtype=np.float32).reshape(2, 4, 3) % 5 - 2.0
  dense = np.full((2, 4, 3), 1 / 3, np.float32)
  dense[0, 0] = [1.0, 0.0, 0.0]

  def ce(z, t):  # soft-target cross-entropy by hand
    z = z - z.max(-1, keepdims=True)
    return -(t * (z - np.log(np.exp(z).sum(-1, keepdims=True)))).sum(-1)
  want_loss = ce(logits_cls, cls_t).mean() + 0.5 * ce(tok, dense).mean()
  loss, l_cls, l_dense = token_labeling_loss(logits_cls, tok, cls_t, dense, 0.5)
  np.testing.assert_allclose(float(loss), want_loss, rtol=1e-6)
  np.testing.assert_allclose(float(l_cls), ce(logits_cls, cls_t).mean(), rtol=1e-6)
  # Score maps: 4x4 teacher -> 2x2 student grid by 2x2 averaging, then softmax.
  scores = np.random.RandomState(0).randn(1, 4, 4, 3).astype(np.float32)
  pooled = scores.reshape(1, 2, 2, 2, 2, 3).mean((2, 4)).reshape(1, 4, 3)
  want_t = np.exp(pooled) / np.exp(pooled).sum(-1, keepdims=True)
  np.testing.assert_allclose(dense_targets_from_scores(scores, (2, 2)), want_t, rtol=1e-5)
  top1 = np.asarray(dense_targets_from_scores(scores, (2, 2), topk=1))
  np.testing.assert_array_equal(top1, np.eye(3)[pooled.argmax(-1)])


def test_rand_token_box_is_in_the_grid():
  keys = jax.random.split(jax.random.PRNGKey(0), 50)
  boxes = np.asarray(jax.jit(jax.vmap(lambda k: rand_token_box(k, 4, 6)))(keys))
  y0, x0, y1, x1 = boxes.T
  assert (0 <= y0).all() and (y0 <= y1).all() and (y1 <= 4).all()
  assert (0 <= x0).all() and (x0 <= x1).all() and (x1 <= 6).all()
  assert len({tuple(b) for b in boxes}) > 10  # random
  np.testing.assert_array_equal(rand_token_box(keys[3], 4, 6), boxes[3])  # deterministic


def test_model_outputs_and_mix_box():
  m = LVViT(**TINY)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 3))

  @jax.jit  # one compilation for everything
  def run(x):
    v = m.init(jax.random.PRNGKey(1), x)
    logits, out = m.apply(v, x)
    train = lambda box: m.apply(v, x, train=True, mix_box=box, mutable=["batch_stats"])[0][1]
    return logits, out, train(None), train((1, 1, 1, 3)), train((0, 0, 4, 4))
  logits, out, plain, empty, full = run(x)
  assert out["token_logits"].shape == (2, 16, 3) and out["stage_0"].shape == (2, 4, 4, 16)
  assert out["stem"].shape == (2, 4, 4, 16) and out["encoded"].shape == (2, 17, 16)
  np.testing.assert_allclose(
      logits, out["logits_cls"] + 0.5 * out["token_logits"].max(1), atol=1e-6)
  # An empty box changes nothing.
  np.testing.assert_allclose(empty["token_logits"], plain["token_logits"], atol=1e-6)
  # A box over the whole grid: every image gets its partner's tokens; the
  # class logits follow the batch reversed, the token logits are swapped back.
  np.testing.assert_allclose(full["logits_cls"], plain["logits_cls"][::-1], atol=1e-5)
  np.testing.assert_allclose(full["token_logits"], plain["token_logits"], atol=1e-5)
  assert not np.allclose(full["token_logits"], full["token_logits"][::-1], atol=1e-3)


def test_bad_sizes_are_user_errors():
  with pytest.raises(UserError, match="divisible by the stem stride 16.*208 or 224"):
    create_model("lvvit_s", image_size=220)
  with pytest.raises(UserError, match="must be even"):
    LVViT(**{**TINY, "patch_size": 3})
  m = LVViT(**TINY)
  with pytest.raises(UserError, match="input height=18"):
    m.init(jax.random.PRNGKey(0), jnp.zeros((1, 18, 16, 3)))


def _teacher_workdir(tmp_path, x):
  """A tiny random ViT (patch 2: an 8x8 score map), saved as a vitjax run."""
  overrides = dict(patch_size=2, hidden_size=16, depth=1, mlp_dim=32, num_heads=2,
                   head_zero_init=False)
  teacher = create_model("vit_quickstart", num_classes=3, **overrides)
  params = jax.jit(teacher.init)(jax.random.PRNGKey(5), x)["params"]
  ckpt = ckpt_lib.Checkpointer(str(tmp_path))
  ckpt.save(5, {"params": params}, force=True)
  ckpt.wait()
  ckpt.close()
  with open(tmp_path / "config.json", "w") as f:
    json.dump({"model_name": "vit_quickstart", "task": "classification", "model": overrides}, f)
  return teacher, params


@pytest.mark.slow
def test_token_labeling_trains_from_a_tiny_teacher(tmp_path):
  x = np.random.RandomState(0).randn(4, 16, 16, 3).astype(np.float32)
  y = np.array([0, 1, 2, 1])
  teacher, t_params = _teacher_workdir(tmp_path, x)
  config = default_config()
  config.task = "token_labeling"
  config.input.image_size = 16
  config.label_smoothing = 0.1
  config.task_kwargs = ml_collections.ConfigDict(dict(teacher_checkpoint=str(tmp_path)))
  info = ml_collections.ConfigDict(dict(num_classes=3))
  student = LVViT(**TINY)
  task = get_task("token_labeling")(config, info, student)

  # The teacher's dense targets: its head on each of its 8x8 patch tokens,
  # averaged over 2x2 cells onto the student's 4x4 grid, softmaxed.
  t_out, got = jax.jit(lambda x: (teacher.apply({"params": t_params}, x)[1]["feature_map"],
                                  task.dense_targets(x, None, (4, 4))))(x)
  s = np.asarray(t_out) @ np.asarray(t_params["head"]["kernel"]) + np.asarray(
      t_params["head"]["bias"])
  s = s.reshape(4, 4, 2, 4, 2, 3).mean((2, 4)).reshape(4, 16, 3)
  want = np.exp(s - s.max(-1, keepdims=True))
  want /= want.sum(-1, keepdims=True)
  np.testing.assert_allclose(got, want, atol=1e-5)

  tx = optax.adam(3e-3)

  @jax.jit
  def init(rng):
    variables = student.init(rng, task.init_inputs())
    return variables["params"], {"batch_stats": variables["batch_stats"]}, tx.init(
        variables["params"])
  params, state, opt = init(jax.random.PRNGKey(1))
  batch = {"image": x, "label": y}
  rng = jax.random.PRNGKey(7)  # fixed: the same MixToken box every step

  @jax.jit
  def step(params, state, opt):
    (loss, (metrics, state, _)), g = jax.value_and_grad(task.train_loss, has_aux=True)(
        params, state, batch, rng)
    upd, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, upd), state, opt, loss, metrics
  losses = []
  for _ in range(8):
    params, state, opt, loss, metrics = step(params, state, opt)
    losses.append(float(loss))
  print("token labeling losses", losses)
  assert np.isfinite(losses).all() and losses[-1] < losses[0] - 0.05, losses
  assert {"loss_cls", "loss_dense", "accuracy"} <= set(metrics)


def test_task_refuses_bad_setups(tmp_path):
  config = default_config()
  info = ml_collections.ConfigDict(dict(num_classes=3))
  config.task_kwargs = ml_collections.ConfigDict(dict(dense_wieght=0.5))
  with pytest.raises(UserError, match="dense_wieght"):
    get_task("token_labeling")(config, info, LVViT(**TINY))
  config.task_kwargs = ml_collections.ConfigDict()
  with pytest.raises(UserError, match="token_logits"):
    get_task("token_labeling")(config, info, create_model("vit_quickstart", num_classes=3))
  config.task_kwargs = ml_collections.ConfigDict(dict(teacher_checkpoint=str(tmp_path)))
  with pytest.raises(UserError, match="config.json"):
    get_task("token_labeling")(config, info, LVViT(**TINY))
