"""DINO: loss, schedules, teacher / center updates, head, multi-crop, bad input, trainer runs."""

import math
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import ROOT, run_main
from vitjax import optim
from vitjax.config import default_config
from vitjax.errors import UserError
from vitjax.models import create_model
from vitjax.models.dino import WeightNormDense
from vitjax.tasks import get_task
from vitjax.tasks.dino import (DinoTask, cosine_momentum, dino_kwargs, dino_loss,
                               teacher_temperature)
from vitjax.tasks.multicrop import random_resized_crop
from vitjax.tools import attention

TINY = dict(hidden_size=16, depth=1, num_heads=2, mlp_dim=32, out_dim=8, head_hidden_dim=16,
            head_bottleneck_dim=4)


class _Info:
  num_classes, num_train = 10, 1437


def _config(**task_kwargs):
  c = default_config()
  c.task, c.model_name = "dino", "dino_vit_quickstart"
  c.input.image_size = 16
  c.total_steps = 100
  c.task_kwargs = dino_kwargs(**dict(dict(global_size=16, local_size=8, num_local_crops=2,
                                          flip=False, blur=False), **task_kwargs))
  return c


def _task(**task_kwargs):
  return DinoTask(_config(**task_kwargs), _Info(), create_model("dino_vit_quickstart", **TINY))


def test_loss_hand_computed_centering_and_sharpening():
  # Teacher [1, 0] minus center [0.5, -0.5] is [0.5, 0.5]: a uniform target,
  # whatever the temperature; a student at [0, 0] is uniform too -> log 2 per pair.
  t = [jnp.array([[1.0, 0.0]])] * 2
  s = [jnp.zeros((1, 2))] * 3
  loss = dino_loss(s, t, jnp.array([[0.5, -0.5]]), 0.1, 0.04)
  np.testing.assert_allclose(loss, math.log(2), rtol=1e-6)
  # Without the center the target is sharpened: softmax([1, 0] / 0.5) = [e^2, 1] / (e^2 + 1);
  # student [1, 0] at temperature 1 -> log-probs [log(e / (e + 1)), log(1 / (e + 1))].
  q = np.array([math.exp(2), 1.0]) / (math.exp(2) + 1)
  logp = np.log(np.array([math.e, 1.0]) / (math.e + 1))
  ce = -float(np.sum(q * logp))
  loss = dino_loss([jnp.array([[1.0, 0.0]])] * 3, t, jnp.zeros((1, 2)), 1.0, 0.5)
  np.testing.assert_allclose(loss, ce, rtol=1e-6)


def test_loss_skips_same_view_pairs():
  # Student view 0 equals teacher view 0 (a perfect, zero-entropy match would
  # be rewarded if the pair were counted); the others are uniform.
  big = jnp.array([[50.0, -50.0]])
  t = [big, -big]
  s = [big, -big, jnp.zeros((1, 2))]
  loss = dino_loss(s, t, jnp.zeros((1, 2)), 1.0, 1.0)
  # pairs: (t0, s1): CE of [1, 0] vs log-softmax(-big) = 100; (t0, s2): log 2;
  # (t1, s0): 100; (t1, s2): log 2.
  np.testing.assert_allclose(loss, (200 + 2 * math.log(2)) / 4, rtol=1e-5)


def test_momentum_and_teacher_temperature_schedules():
  np.testing.assert_allclose(cosine_momentum(0, 100, 0.996), 0.996, rtol=1e-7)
  np.testing.assert_allclose(cosine_momentum(50, 100, 0.996), 0.998, rtol=1e-7)
  np.testing.assert_allclose(cosine_momentum(100, 100, 0.996), 1.0, rtol=1e-7)
  np.testing.assert_allclose(teacher_temperature(0, 30, 0.04, 0.07), 0.04, rtol=1e-6)
  np.testing.assert_allclose(teacher_temperature(15, 30, 0.04, 0.07), 0.055, rtol=1e-6)
  np.testing.assert_allclose(teacher_temperature(90, 30, 0.04, 0.07), 0.07, rtol=1e-6)


def test_teacher_ema_and_center_update():
  task = _task(momentum_teacher=0.9, center_momentum=0.9)
  state = {"teacher": {"w": jnp.ones(3)}, "center": jnp.zeros((1, 8))}
  new = task.update_task_state(state, {"w": jnp.zeros(3)}, {"batch_center": jnp.ones((1, 8))},
                               jnp.asarray(0))
  np.testing.assert_allclose(new["teacher"]["w"], 0.9, rtol=1e-6)   # m = 0.9 at step 0
  np.testing.assert_allclose(new["center"], 0.1, rtol=1e-6)
  new = task.update_task_state(state, {"w": jnp.zeros(3)}, {"batch_center": jnp.ones((1, 8))},
                               jnp.asarray(100))
  np.testing.assert_allclose(new["teacher"]["w"], 1.0, rtol=1e-6)   # m = 1 at the end


def test_weight_norm_last_layer_has_unit_columns_and_ignores_scale():
  layer = WeightNormDense(5)
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 4))
  x = x / jnp.linalg.norm(x, axis=1, keepdims=True)
  v = layer.init(jax.random.PRNGKey(1), x)
  y = layer.apply(v, x)
  y2 = layer.apply(jax.tree.map(lambda a: 7.0 * a, v), x)
  np.testing.assert_allclose(y, y2, rtol=1e-5, atol=1e-6)       # g fixed: scale of v irrelevant
  assert float(jnp.max(jnp.abs(y))) <= 1.0 + 1e-6               # cosine similarities
  k = v["params"]["kernel"]
  np.testing.assert_allclose(y, x @ (k / jnp.linalg.norm(k, axis=0)), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_multicrop_shapes_and_identity_crop():
  task = _task(num_local_crops=3)
  images = jax.random.normal(jax.random.PRNGKey(0), (4, 16, 16, 3))
  g, loc = jax.jit(task.views)(jax.random.PRNGKey(1), images)
  assert g.shape == (8, 16, 16, 3) and loc.shape == (12, 8, 8, 3)
  assert bool(jnp.all(jnp.isfinite(g))) and bool(jnp.all(jnp.isfinite(loc)))
  same = random_resized_crop(jax.random.PRNGKey(2), images, 16, (1.0, 1.0), ratio=(1.0, 1.0))
  np.testing.assert_allclose(same, images, atol=1e-5)
  model = create_model("dino_vit_quickstart", **TINY)
  v = model.init(jax.random.PRNGKey(0), g[:1])
  z, out = model.apply(v, loc)       # the learned posemb resampled to the 2x2 grid
  assert z.shape == (12, 8) and out["feature_map"].shape == (12, 2, 2, 16)


def test_param_counts_of_named_sizes():
  # Backbones: timm's vit_small / vit_base_patch16_224 without the 1000-class
  # head (22,050,664 - 385,000; 86,567,656 - 769,000); DINO head of the paper
  # (2048 hidden, 256 bottleneck, 65536 out, weight-normalised layer with g fixed).
  for name, backbone, head in (("dino_vit_small_patch16", 21_665_664, 22_286_592),
                               ("dino_vit_base_patch16", 85_798_656, 23_073_024)):
    m = create_model(name)
    shapes = jax.eval_shape(m.init, jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)))
    count = lambda t: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(t))
    p = shapes["params"]
    assert count({k: v for k, v in p.items() if k != "dino_head"}) == backbone
    assert count(p["dino_head"]) == head


def test_weight_decay_schedule_cosine_to_end():
  c = default_config().optimizer
  c.weight_decay, c.weight_decay_end = 0.04, 0.4
  f = optim.weight_decay_schedule(c, 100)
  np.testing.assert_allclose([f(0), f(50), f(100)], [0.04, 0.22, 0.4], rtol=1e-5)


@pytest.mark.parametrize("kwargs,match", [
    (dict(local_size=6), "local_size=6 is not a multiple of the patch size 4"),
    (dict(global_size=18), "global_size=18 is not a multiple"),
    (dict(num_local_crops=-1), "num_local_crops"),
    (dict(local_scale=(0.5, 0.1)), "local_scale"),
    (dict(teacher_temp=0.0), "teacher_temp"),
    (dict(momentum_teacher=1.5), "momentum_teacher"),
    (dict(centre=1), "not dino settings"),
])
def test_bad_task_kwargs_refused(kwargs, match):
  with pytest.raises(UserError, match=match):
    _task(**kwargs)


def test_bad_model_refused():
  with pytest.raises(UserError, match="out_dim=0"):
    create_model("dino_vit_quickstart", out_dim=0)
  with pytest.raises(UserError, match="needs a DINO model"):
    get_task("dino")(_config(), _Info(), create_model("vit_quickstart"))


FAST = ("model.depth=1", "model.hidden_size=16", "model.mlp_dim=32", "model.num_heads=2",
        "model.out_dim=16", "model.head_hidden_dim=16", "model.head_bottleneck_dim=8",
        "task_kwargs.num_local_crops=2", "batch_size=16", "eval_batch_size=40",
        "log_every_steps=1", "eval_every_steps=1000", "checkpoint_every_steps=1000")


def _task_state(workdir, step):
  path = os.path.join(workdir, "checkpoints", str(step), "default")
  restored = ocp.StandardCheckpointer().restore(os.path.abspath(path))
  return restored["task_state"]


@pytest.mark.slow
def test_three_steps_through_main_and_exact_resume_with_task_state(tmp_path):
  straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
  run_main(straight, "total_steps=3", *FAST, config="configs/dino_digits.py")
  run_main(split, "total_steps=2", *FAST, config="configs/dino_digits.py")
  p = run_main(split, "total_steps=3", *FAST, config="configs/dino_digits.py")
  assert "Resumed from" in p.stderr
  a, b = _task_state(straight, 3), _task_state(split, 3)
  assert float(np.abs(np.asarray(a["center"])).sum()) > 0       # the center moved
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)  # two compilations: round-off
  # The class-token attention of every head of the last layer, as one PNG.
  files = attention.render(straight, str(tmp_path / "att"), index=0, mode="cls_heads")
  assert [os.path.basename(f) for f in files] == ["cls_heads.png"]
  assert os.path.getsize(files[0]) > 1000


def test_imagenet_config_freezes_only_the_last_layer_for_the_first_epoch():
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location(
      "dino_vit_s16", os.path.join(ROOT, "configs", "dino_vit_s16.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config(None)
  spe = 1_281_167 // c.batch_size
  model = create_model(c.model_name, **TINY)  # same module names as ViT-S/16, tiny dims
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))["params"]
  optim.check_freeze_patterns(params, c.optimizer)
  for step, last_on in ((0, False), (spe - 1, False), (spe, True)):
    mask = optim.trainable_mask(params, c.optimizer, jnp.asarray(step))
    flat = {"/".join(k): bool(v) for k, v in flax.traverse_util.flatten_dict(mask).items()}
    assert flat.pop("dino_head/last_layer/kernel") is last_on, step
    assert all(flat.values()), step  # everything else trains from step 0
