"""MoCo v3: symmetric InfoNCE, momentum encoder, random patch projection, trainer runs."""

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import run_main
from vitjax.config import default_config
from vitjax.errors import UserError
from vitjax.models import create_model
from vitjax.tasks.moco import MocoV3Task, contrastive_loss, moco_v3_kwargs, symmetric_infonce

TINY = dict(hidden_size=16, depth=1, num_heads=2, mlp_dim=32, proj_dim=8, head_hidden_dim=16)


class _Info:
  num_classes, num_train = 10, 1437


def _config(freeze=(), **task_kwargs):
  c = default_config()
  c.task, c.model_name = "moco_v3", "moco_v3_vit_quickstart"
  c.input.image_size = 16
  c.total_steps = 100
  c.optimizer.freeze = freeze
  c.task_kwargs = moco_v3_kwargs(**dict(dict(flip=False, blur=False), **task_kwargs))
  return c


def _task(freeze=(), **task_kwargs):
  return MocoV3Task(_config(freeze, **task_kwargs), _Info(),
                    create_model("moco_v3_vit_quickstart", **TINY))


@pytest.mark.slow
def test_infonce_hand_computed():
  # Orthogonal unit keys; query 0 aligned with key 0, query 1 halfway between.
  q = jnp.array([[1.0, 0.0], [1.0, 1.0]])
  k = jnp.array([[1.0, 0.0], [0.0, 1.0]])
  t = 0.5
  s = 1 / math.sqrt(2)
  # row 0: logits [2, 0], label 0; row 1: logits [s/t, s/t], label 1.
  ce0 = -math.log(math.exp(2) / (math.exp(2) + 1))
  ce1 = math.log(2)
  np.testing.assert_allclose(contrastive_loss(q, k, t), (ce0 + ce1) / 2 * 2 * t, rtol=1e-6)
  del s
  # Symmetric: ctr(q1, k2) + ctr(q2, k1), and swapping the views does not change it.
  r = jax.random.normal(jax.random.PRNGKey(0), (4, 5, 3))
  a = symmetric_infonce(r[0], r[1], r[2], r[3], 0.2)
  b = symmetric_infonce(r[1], r[0], r[3], r[2], 0.2)
  np.testing.assert_allclose(a, b, rtol=1e-6)
  np.testing.assert_allclose(a, contrastive_loss(r[0], r[3], 0.2) +
                             contrastive_loss(r[1], r[2], 0.2), rtol=1e-6)


@pytest.mark.slow
def test_momentum_encoder_ema_without_predictor_and_schedule():
  task = _task(momentum=0.99)
  model = create_model("moco_v3_vit_quickstart", **TINY)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((2, 16, 16, 3)))["params"]
  state = task.init_task_state(params)
  assert "predictor" not in state["momentum_encoder"] and "projector" in params
  zeros = jax.tree.map(jnp.zeros_like, params)
  new = task.update_task_state(state, zeros, {}, jnp.asarray(0))
  k = state["momentum_encoder"]["projector"]["dense_0"]["kernel"]
  np.testing.assert_allclose(new["momentum_encoder"]["projector"]["dense_0"]["kernel"],
                             0.99 * k, rtol=1e-6)
  end = task.update_task_state(state, zeros, {}, jnp.asarray(100))
  np.testing.assert_allclose(end["momentum_encoder"]["projector"]["dense_0"]["kernel"], k)


def test_views_shapes_and_loss_runs():
  task = _task()
  model = task.model
  v = model.init(jax.random.PRNGKey(0), jnp.zeros((2, 16, 16, 3)))
  params, ms = v["params"], {"batch_stats": v["batch_stats"]}
  batch = {"image": jax.random.normal(jax.random.PRNGKey(1), (8, 16, 16, 3))}
  loss, (_, new_ms, _) = jax.jit(task.train_loss)(
      params, ms, batch, jax.random.PRNGKey(2), task_state=task.init_task_state(params),
      step=jnp.asarray(0))
  assert np.isfinite(float(loss)) and float(loss) > 0
  assert set(new_ms["batch_stats"]) == {"projector", "predictor"}


def test_random_patch_projection_needs_the_freeze_pattern():
  with pytest.raises(UserError, match="optimizer.freeze"):
    _task(random_patch_projection=True)
  _task(freeze=("^patch_embed/",), random_patch_projection=True)


@pytest.mark.parametrize("kwargs,match", [
    (dict(crop_size=18), "crop_size=18 is not a multiple of the patch size 4"),
    (dict(temperature=0.0), "temperature"),
    (dict(momentum=2.0), "momentum"),
    (dict(crop_scale=(0.0, 1.0)), "crop_scale"),
    (dict(tau=0.2), "not moco_v3 settings"),
])
def test_bad_task_kwargs_refused(kwargs, match):
  with pytest.raises(UserError, match=match):
    _task(**kwargs)


def test_bad_model_refused():
  with pytest.raises(UserError, match="proj_dim=0"):
    create_model("moco_v3_vit_quickstart", proj_dim=0)
  with pytest.raises(UserError, match="needs a MoCo v3 model"):
    MocoV3Task(_config(), _Info(), create_model("vit_quickstart"))


FAST = ("model.depth=1", "model.hidden_size=16", "model.mlp_dim=32", "model.num_heads=2",
        "model.proj_dim=8", "model.head_hidden_dim=16", "batch_size=16", "eval_batch_size=40",
        "log_every_steps=1", "eval_every_steps=1000", "checkpoint_every_steps=1000",
        "task_kwargs.random_patch_projection=True", "optimizer.freeze=('^patch_embed/',)")


@pytest.mark.slow
def test_three_steps_through_main_resume_and_frozen_patch_projection(tmp_path):
  wd = str(tmp_path / "moco")
  run_main(wd, "total_steps=2", *FAST, config="configs/moco_v3_digits.py")
  p = run_main(wd, "total_steps=3", *FAST, config="configs/moco_v3_digits.py")
  assert "Resumed from" in p.stderr
  restore = lambda s: ocp.StandardCheckpointer().restore(
      os.path.abspath(os.path.join(wd, "checkpoints", str(s), "default")))
  two, three = restore(2), restore(3)
  enc = three["task_state"]["momentum_encoder"]
  assert "predictor" not in enc
  # The momentum encoder moved towards the params, the patch projection did not move at all.
  assert not np.allclose(enc["block_0"]["mlp"]["fc1"]["kernel"],
                         two["task_state"]["momentum_encoder"]["block_0"]["mlp"]["fc1"]["kernel"])
  np.testing.assert_array_equal(three["params"]["patch_embed"]["proj"]["kernel"],
                                two["params"]["patch_embed"]["proj"]["kernel"])
  np.testing.assert_array_equal(enc["patch_embed"]["proj"]["kernel"], three["params"]["patch_embed"]["proj"]["kernel"])
