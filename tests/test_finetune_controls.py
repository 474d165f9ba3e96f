"""Fine-tuning controls of the trainer: gradient accumulation, layer-wise lr
decay, freezing and progressive unfreezing, EMA, bf16 mixed precision."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vitjax import optim
from vitjax.config import default_config, validate_config
from vitjax.errors import UserError
from vitjax.models import create_model
from vitjax.tasks.classification import ClassificationTask
from vitjax.train import TrainState, build_model, make_train_step, train_and_evaluate

TINY_VIT = dict(depth=3, hidden_size=16, num_heads=2, mlp_dim=32, num_classes=10,
                drop_path_rate=0.0, dropout=0.0, head_zero_init=False)


class _Info:
  num_classes = 10


def _setup(opt_updates=None, accum=1, ema=0.0, model="vit_tiny_patch16_224", image=16,
           **model_kw):
  c = default_config()
  c.input.image_size = image
  c.optimizer.update(dict(dict(learning_rate=1e-2, warmup_steps=0, schedule="constant"),
                          **(opt_updates or {})))
  m = create_model(model, **dict(TINY_VIT, patch_size=4, **model_kw))
  task = ClassificationTask(c, _Info(), m)
  params = m.init(jax.random.PRNGKey(0), task.init_inputs())["params"]
  tx, schedule = optim.create_optimizer(c.optimizer, 100, m)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                     model_state={}, nonfinite_step=jnp.full((), -1, jnp.int32),
                     ema_params=params if ema else None)
  step = jax.jit(make_train_step(task, tx, schedule, jax.random.PRNGKey(1), accum_steps=accum,
                                 opt_cfg=c.optimizer, ema_decay=ema))
  return state, step


def _batch(n=32, image=16, seed=0):
  r = np.random.RandomState(seed)
  return {"image": jnp.asarray(r.randn(n, image, image, 3), jnp.float32),
          "label": jnp.asarray(r.randint(0, 10, n), jnp.int32)}


def _max_diff(a, b):
  return max(float(jnp.max(jnp.abs(x - y))) for x, y in
             zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.slow
def test_gradient_accumulation_equals_one_large_batch():
  """SGD with momentum (an update linear in the gradient, so the comparison
  measures the gradients themselves; Adam's g / sqrt(v) would amplify float
  noise of near-zero gradients into O(lr) differences)."""
  batch = _batch(32)
  sgd = dict(name="sgd", learning_rate=0.1, momentum=0.9)
  s1, step1 = _setup(sgd, accum=1)
  s4, step4 = _setup(sgd, accum=4)
  for _ in range(3):
    s1, m1 = step1(s1, batch)
    s4, m4 = step4(s4, batch)
  assert abs(float(m1["loss"]) - float(m4["loss"])) < 1e-5
  assert abs(float(m1["grad_norm"]) - float(m4["grad_norm"])) < 1e-5 * float(m1["grad_norm"])
  diff = _max_diff(s1.params, s4.params)
  print(f"\naccumulation over 4 vs one batch of 32, 3 SGD steps: max |param diff| {diff:.1e}")
  assert diff < 1e-5
  # And it is a real update (the test could fail): params moved by far more.
  assert _max_diff(s1.params, _setup(sgd)[0].params) > 1e-3


def test_micro_batches_interleave_rows():
  from vitjax.train import _micro_batches  # pylint: disable=g-import-not-at-top
  mb = _micro_batches({"x": jnp.arange(8)}, 2)["x"]
  np.testing.assert_array_equal(mb, [[0, 2, 4, 6], [1, 3, 5, 7]])


def test_layer_ids_follow_forward_order():
  vit = create_model("vit_tiny_patch16_224", **dict(TINY_VIT, patch_size=4))
  p = jax.eval_shape(vit.init, jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))["params"]
  ids, num = optim.layer_ids(p, vit)
  assert num == 3
  assert ids["patch_embed"] == ids["cls_token"] == ids["pos_embedding"] == 0
  assert [ids[f"block_{i}"] for i in range(3)] == [1, 2, 3]
  assert ids["norm"] == ids["head"] == 4
  swin = create_model("swin_tiny_patch4_window7_224", depths=(2, 2), num_heads=(1, 2),
                      embed_dim=8, window_size=4, patch_size=2, num_classes=3)
  p = jax.eval_shape(swin.init, jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))["params"]
  ids, num = optim.layer_ids(p, swin)
  assert num == 4 and ids["patch_embed"] == 0 and ids["stage_1_block_1"] == 4
  assert ids["stage_1_downsample"] == ids["stage_1_block_0"] == 3 and ids["head"] == 5
  scales = optim.layer_decay_scales(p, 0.5, swin)
  assert scales["head"]["kernel"] == 1.0 and scales["stage_0_block_0"]["mlp"]["fc1"][
      "kernel"] == 0.5 ** 4 and scales["patch_embed"]["proj"]["kernel"] == 0.5 ** 5


@pytest.mark.slow
def test_layer_decay_scales_the_sgd_update():
  """With SGD (no momentum, no decay) the update of block l is exactly
  decay^(L + 1 - l) times the update without layer decay."""
  sgd = dict(name="sgd", momentum=0.0, weight_decay=0.0, grad_clip_norm=0.0, learning_rate=1.0)
  base, step = _setup(sgd)
  ref, _ = step(base, _batch())
  base2, step2 = _setup(dict(sgd, layer_decay=0.5))
  got, _ = step2(base2, _batch())
  delta = lambda s, k: s.params[k]["mlp"]["fc1"]["kernel"] - base.params[k]["mlp"]["fc1"][
      "kernel"] if k.startswith("block") else s.params[k]["kernel"] - base.params[k]["kernel"]
  for name, factor in (("block_0", 0.5 ** 3), ("block_2", 0.5), ("head", 1.0)):
    np.testing.assert_allclose(delta(got, name), factor * delta(ref, name), rtol=1e-4,
                               atol=1e-6)
  assert float(jnp.abs(delta(ref, "block_0")).max()) > 1e-3


@pytest.mark.slow
def test_freeze_and_progressive_unfreeze():
  s, step = _setup(dict(freeze=("^patch_embed/",), unfreeze=((2, "^block_[01]/"),)))
  p0 = s.params
  for _ in range(2):
    s, _ = step(s, _batch())
  np.testing.assert_array_equal(s.params["block_0"]["attn"]["qkv"]["kernel"],
                                p0["block_0"]["attn"]["qkv"]["kernel"])  # frozen until step 2
  assert not np.allclose(s.params["block_2"]["attn"]["qkv"]["kernel"],
                         p0["block_2"]["attn"]["qkv"]["kernel"])
  s, _ = step(s, _batch())
  assert not np.allclose(s.params["block_0"]["attn"]["qkv"]["kernel"],
                         p0["block_0"]["attn"]["qkv"]["kernel"])  # unfrozen at step 2
  np.testing.assert_array_equal(s.params["patch_embed"]["proj"]["kernel"],
                                p0["patch_embed"]["proj"]["kernel"])  # frozen for good


@pytest.mark.slow
def test_ema_tracks_params():
  s, step = _setup(ema=0.5)
  p0 = s.params
  s, _ = step(s, _batch())
  k = lambda t: t["head"]["kernel"]
  np.testing.assert_allclose(k(s.ema_params), 0.5 * k(p0) + 0.5 * k(s.params), atol=1e-7)


def test_bad_settings_are_user_errors(tmp_path):
  c = default_config()
  c.grad_accum_steps = 3
  with pytest.raises(UserError, match="grad_accum_steps=3"):
    validate_config(c, 1)
  c = default_config()
  c.optimizer.layer_decay = 1.5
  with pytest.raises(UserError, match=r"layer_decay=1.5.*\(0, 1\]"):
    validate_config(c, 1)
  c = default_config()
  c.ema_decay = 1.0
  with pytest.raises(UserError, match="ema_decay"):
    validate_config(c, 1)
  # A freeze pattern that matches nothing: refused at start-up, before any compile.
  c = default_config()
  c.model.update(depth=1, hidden_size=16, num_heads=2, mlp_dim=32)
  c.input.image_size = 16
  c.optimizer.freeze = ("^encoder_block_0/",)
  c.progress_bar = False
  with pytest.raises(UserError, match=r"freeze pattern '\^encoder_block_0/' matches no "
                                      r"parameter.*block_0"):
    train_and_evaluate(c, str(tmp_path / "w"))
  c.optimizer.freeze = ("[",)
  with pytest.raises(UserError, match="not a valid regular expression"):
    train_and_evaluate(c, str(tmp_path / "w2"))


@pytest.mark.slow
def test_bf16_compute_with_fp32_params():
  c = default_config()
  c.model_name = "vit_tiny_patch16_224"
  c.model.update(TINY_VIT)
  c.model.patch_size = 4
  c.mixed_precision = "bf16"
  m = build_model(c, 10)
  v = m.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(v["params"]))
  logits, out = m.apply(v, jnp.zeros((2, 16, 16, 3)))
  assert out["encoded"].dtype == jnp.bfloat16 and logits.dtype == jnp.float32
