"""Attention-head pruning: the shrunk model equals the masked one, the
selection rule, the importance identity, and the tool + recovery fine-tune."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vitjax.compress import prune
from vitjax.errors import UserError
from vitjax.models import create_model

KW = dict(patch_size=4, hidden_size=32, depth=2, mlp_dim=64, num_heads=4, num_classes=5,
          head_zero_init=False)


def _tiny(**kw):
  m = create_model("vit_quickstart", **KW, **kw)
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 16, 16, 3))
  return m, x


@pytest.mark.slow
def test_default_head_counts_change_nothing():
  m, x = _tiny()
  v = m.init(jax.random.PRNGKey(1), x)
  m_full, _ = _tiny(head_counts="4,4")
  v_full = m_full.init(jax.random.PRNGKey(1), x)
  assert jax.tree.map(jnp.shape, v) == jax.tree.map(jnp.shape, v_full)
  np.testing.assert_array_equal(m.apply(v, x)[0], m_full.apply(v, x)[0])


def test_pruned_model_equals_masked_heads():
  m, x = _tiny()
  params = m.init(jax.random.PRNGKey(1), x)["params"]
  keep = {("block_0", "attn"): [0, 2], ("block_1", "attn"): [3]}
  small = prune.prune_heads(params, keep, head_dim=8)
  assert small["block_0"]["attn"]["qkv"]["kernel"].shape == (32, 3 * 2 * 8)
  assert small["block_1"]["attn"]["proj"]["kernel"].shape == (8, 32)
  assert prune.count_params(small) == prune.count_params(params) - (2 + 3) * 8 * (3 * 33 + 32)
  # The same function: the full model with the removed heads' output rows zeroed.
  masked = jax.tree.map(np.array, params)
  for (blk, _), heads in keep.items():
    w = masked[blk]["attn"]["proj"]["kernel"].reshape(4, 8, 32)
    w[[h for h in range(4) if h not in heads]] = 0
    masked[blk]["attn"]["proj"]["kernel"] = w.reshape(32, 32)
  m_small, _ = _tiny(head_counts="2,1")
  np.testing.assert_allclose(m_small.apply({"params": small}, x)[0],
                             m.apply({"params": masked}, x)[0], atol=1e-5)


@pytest.mark.slow
def test_importance_is_the_head_mask_gradient():
  m, x = _tiny()
  params = m.init(jax.random.PRNGKey(1), x)["params"]
  labels = jnp.array([0, 1, 2])

  def loss(p, xi=None):
    if xi is not None:  # explicit head mask on block_1: scale its proj rows
      p = jax.tree.map(lambda a: a, p)
      w = p["block_1"]["attn"]["proj"]["kernel"].reshape(4, 8, 32) * xi[:, None, None]
      p["block_1"]["attn"]["proj"]["kernel"] = w.reshape(32, 32)
    logits = m.apply({"params": p}, x)[0]
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))

  g_mask = jax.grad(lambda xi: loss(params, xi))(jnp.ones(4))
  grads = jax.grad(loss)(params)
  s = prune.head_scores_from_grad(params, grads, [("block_1", "attn")], 8)
  np.testing.assert_allclose(s[("block_1", "attn")], g_mask, rtol=1e-4, atol=1e-7)
  imp = prune.head_importance(lambda p, b: loss(p), params, [None, None], 8)
  assert list(imp) == [("block_0", "attn"), ("block_1", "attn")]
  np.testing.assert_allclose(np.linalg.norm(imp[("block_1", "attn")]), 1.0, rtol=1e-6)


def test_select_heads_keeps_one_per_layer():
  imp = {("a",): np.array([0.1, 0.2, 0.9]), ("b",): np.array([0.05, 0.01, 0.8]),
         ("c",): np.array([0.001])}
  # 7 heads, ratio 0.3 -> 2 pruned: c's only head is protected, so b1 and b0 go.
  assert prune.select_heads(imp, 0.3) == {("a",): [0, 1, 2], ("b",): [2], ("c",): [0]}
  assert prune.select_heads(imp, 0.4) == {("a",): [1, 2], ("b",): [2], ("c",): [0]}
  with pytest.raises(ValueError, match="ratio"):
    prune.select_heads(imp, 1.0)


def test_bad_head_counts_refused():
  m, x = _tiny(head_counts="4,0")
  with pytest.raises(UserError, match="head_counts"):
    m.init(jax.random.PRNGKey(0), x)


@pytest.mark.slow
def test_tool_and_recovery_finetune(tmp_path):
  from vitjax.config import default_config  # pylint: disable=g-import-not-at-top
  from vitjax.tools.probe import load_run  # pylint: disable=g-import-not-at-top
  from vitjax.tools.prune import prune_run  # pylint: disable=g-import-not-at-top
  from vitjax.tools.quantize import eval_accuracy  # pylint: disable=g-import-not-at-top
  from vitjax.train import train_and_evaluate  # pylint: disable=g-import-not-at-top
  c = default_config()
  c.model.update(depth=2, hidden_size=32, mlp_dim=64, num_heads=4)
  c.input.update(image_size=16, train_augment="none", flip=False)
  c.batch_size, c.eval_batch_size = 64, 120
  c.total_steps, c.log_every_steps, c.eval_every_steps = 60, 30, 60
  c.optimizer.update(learning_rate=3e-3, warmup_steps=10)
  c.progress_bar = False
  wd, out = str(tmp_path / "run"), str(tmp_path / "pruned")
  train_and_evaluate(c, wd)
  r = prune_run(wd, 0.3, out, num_batches=2)
  assert r["heads_before"] == 8 and r["heads_after"] == 6   # round(0.3 * 8) = 2 pruned
  assert r["params_after"] == r["params_before"] - 2 * 8 * (3 * 33 + 32)
  assert r["flops_after"] < r["flops_before"]
  config, model, variables = load_run(out)
  assert config.model.head_counts == r["head_counts"]
  assert eval_accuracy(model, variables, config) == pytest.approx(r["accuracy_pruned"])
  c.model.head_counts = r["head_counts"]
  c.init_from.checkpoint, c.init_from.reinit_head = out, False
  c.total_steps, c.eval_every_steps = 10, 10
  c.optimizer.update(learning_rate=5e-4, warmup_steps=2)
  final = train_and_evaluate(c, str(tmp_path / "ft"))
  assert final["eval/accuracy"] >= r["accuracy_pruned"] - 0.05
