"""vitjax.runs.load_run: a finished run back as config + model + variables."""

import json

import jax
import numpy as np
import pytest

from conftest import tiny_digits_config
from vitjax import runs
from vitjax.config import default_config
from vitjax.errors import UserError
from vitjax.tools.quantize import eval_accuracy
from vitjax.train import train_and_evaluate


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """A tiny ViT trained 4 steps on the digits, EMA kept, checkpoints at steps 2 and 4."""
  c = tiny_digits_config(ema_decay=0.5, seed=7)
  c.log_every_steps = c.eval_every_steps = c.checkpoint_every_steps = 2
  wd = str(tmp_path_factory.mktemp("run"))
  final = train_and_evaluate(c, wd)
  return wd, c, final


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_config_model_and_weights_are_the_runs(run_dir):
  wd, c, final = run_dir
  run = runs.load_run(wd)
  assert run.config.to_dict() == c.to_dict()  # every field, tuples included
  assert run.step == 4 and run.info.num_classes == 10
  assert set(run.variables) == {"params"}
  # The EMA weights by default: what the run's own evaluation used.
  assert eval_accuracy(run.model, run.variables, run.config) == pytest.approx(
      final["eval/accuracy"], abs=1e-6)
  raw = runs.load_run(wd, ema=False)
  assert any(np.abs(a - b).max() > 0 for a, b in zip(_leaves(raw.variables),
                                                     _leaves(run.variables)))
  ema = runs.load_run(wd, ema=True)
  for a, b in zip(_leaves(ema.variables), _leaves(run.variables)):
    np.testing.assert_array_equal(a, b)
  early = runs.load_run(wd, step=2, ema=False)
  assert early.step == 2
  assert any(np.abs(a - b).max() > 0 for a, b in zip(_leaves(early.variables),
                                                     _leaves(raw.variables)))
  logits, _ = run.model.apply(run.variables, np.zeros((2, 8, 8, 3), np.float32), train=False)
  assert logits.shape == (2, 10)
  # The probe tool's tuple form is the same loader.
  from vitjax.tools.probe import load_run  # pylint: disable=g-import-not-at-top
  config, model, variables = load_run(wd)
  assert config.to_dict() == c.to_dict() and model == run.model
  for a, b in zip(_leaves(variables), _leaves(run.variables)):
    np.testing.assert_array_equal(a, b)


def test_bad_workdirs_name_the_path(run_dir, tmp_path):
  wd, c, _ = run_dir
  missing = str(tmp_path / "nowhere")
  with pytest.raises(UserError, match=r"nowhere.*no config\.json.*does not exist"):
    runs.load_run(missing)
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(UserError, match=r"--workdir=.*empty.* has no config\.json"):
    runs.load_run(str(empty))
  (empty / "config.json").write_text(json.dumps(c.to_dict()))
  with pytest.raises(UserError, match=r"no vitjax checkpoint found under .*empty"):
    runs.load_run(str(empty))
  with pytest.raises(UserError, match=r"teacher: no vitjax checkpoint found under .*empty"):
    runs.load_run(str(empty), what="teacher")
  # Without weights, a fresh init of the same model (the probe's baseline) still works.
  fresh = runs.load_run(str(empty), random_init=True)
  assert fresh.step is None and "params" in fresh.variables
  (empty / "config.json").write_text("{not json")
  with pytest.raises(UserError, match="JSON"):
    runs.load_run(str(empty))
  (empty / "config.json").write_text(json.dumps({"task": "classification"}))
  with pytest.raises(UserError, match="no model_name"):
    runs.load_run(str(empty))
  with pytest.raises(UserError, match=r"no checkpoint of step 3; it has steps \[2, 4\]"):
    runs.load_run(wd, step=3)
  # A checkpoint without an EMA (ema_decay=0, or a file like the prune tool's).
  from vitjax import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  params = runs.load_run(wd, ema=False).variables["params"]
  (empty / "config.json").write_text(json.dumps(c.to_dict()))
  saver = ckpt_lib.Checkpointer(str(empty))
  saver.save(1, {"params": params}, force=True)
  saver.wait()
  saver.close()
  plain = runs.load_run(str(empty))
  assert plain.step == 1
  for a, b in zip(_leaves(plain.variables["params"]), _leaves(params)):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(UserError, match="holds no EMA"):
    runs.load_run(str(empty), ema=True)


def test_teachers_use_the_loader(run_dir):
  """Distillation reads the teacher with load_run's parts: the same (EMA) weights."""
  from vitjax.tasks.distillation import DistillationTask, distillation_kwargs  # pylint: disable=g-import-not-at-top
  wd, c, _ = run_dir
  s = default_config()
  s.model.update(hidden_size=16, depth=1, num_heads=2, mlp_dim=16, patch_size=4,
                 distilled=True)
  s.input.image_size = 8
  s.task = "distillation"
  s.task_kwargs = distillation_kwargs(teacher=wd, kind="soft")
  info = runs.dataset_info(c)
  student, _ = runs.build_model(s, info.num_classes)
  task = DistillationTask(s, info, student)
  run = runs.load_run(wd)
  assert task.teacher == run.model and task.teacher_image_size == 8
  for a, b in zip(_leaves(task.teacher_vars), _leaves(run.variables)):
    np.testing.assert_array_equal(a, b)
