"""Distillation task: a frozen vitjax teacher inside the jitted step."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vitjax.config import default_config
from vitjax.errors import UserError
from vitjax.tasks.distillation import DistillationTask, distillation_kwargs
from vitjax.train import build_model, train_and_evaluate


def _base(image=8):
  c = default_config()
  c.dataset.name = "digits"
  c.input.update(image_size=image, train_augment="none", flip=False)
  c.batch_size, c.eval_batch_size = 64, 120
  c.log_every_steps, c.progress_bar = 10, False
  c.optimizer.update(learning_rate=3e-3, warmup_steps=0)
  return c


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
  """A tiny BatchNorm CNN teacher trained for 40 steps on the digits."""
  c = _base()
  c.model_name = "resnet18"
  c.model.update(width=4, small_stem=True)
  c.total_steps, c.eval_every_steps = 40, 40
  wd = str(tmp_path_factory.mktemp("teacher"))
  final = train_and_evaluate(c, wd)
  assert final["eval/accuracy"] > 0.5
  return wd


def _student(teacher_dir, kind):
  c = _base()
  c.model_name = "vit_quickstart"
  c.model.update(hidden_size=16, mlp_dim=32, num_heads=2, depth=1, patch_size=4,
                 distilled=True, head_zero_init=False)
  c.task = "distillation"
  c.task_kwargs = distillation_kwargs(teacher=teacher_dir, kind=kind, temperature=2.0)
  c.total_steps, c.eval_every_steps = 6, 6
  return c


class _Info:
  num_classes = 10


@pytest.mark.parametrize("kind", ["hard", "soft"])
@pytest.mark.slow
def test_loss_matches_hand_computation(teacher, kind):
  c = _student(teacher, kind)
  model = build_model(c, 10)
  task = DistillationTask(c, _Info(), model)
  r = np.random.RandomState(0)
  batch = {"image": jnp.asarray(r.randn(4, 8, 8, 3), jnp.float32),
           "label": jnp.asarray([1, 2, 3, 4])}
  params = model.init(jax.random.PRNGKey(0), batch["image"])["params"]
  loss, (metrics, _, _) = task.train_loss(params, {}, batch, jax.random.PRNGKey(1),
                                          consts=task.constants())
  _, out = model.apply({"params": params}, batch["image"])  # no dropout in this model
  t_logits, _ = task.teacher.apply(task.teacher_vars, batch["image"])
  ce = lambda z, y: float(np.mean(optax.softmax_cross_entropy_with_integer_labels(z, y)))
  label = ce(out["logits_cls"], batch["label"])
  if kind == "hard":
    want = 0.5 * label + 0.5 * ce(out["logits_dist"], jnp.argmax(t_logits, -1))
  else:
    p = jax.nn.softmax(np.asarray(t_logits) / 2.0)
    logq = jax.nn.log_softmax(np.asarray(out["logits_dist"]) / 2.0)
    kl = float(np.mean(np.sum(p * (np.log(p) - logq), -1)))
    want = 0.5 * label + 0.5 * 4.0 * kl
  assert float(loss) == pytest.approx(want, rel=1e-5)
  assert float(metrics["distill_loss"]) > 0


@pytest.mark.slow
def test_distillation_run_end_to_end(teacher, tmp_path):
  final = train_and_evaluate(_student(teacher, "hard"), str(tmp_path / "s"))
  assert np.isfinite(final["eval/loss"])
  lines = [json.loads(l) for l in open(tmp_path / "s" / "metrics.jsonl")]
  assert any("train/teacher_agreement" in l for l in lines)


@pytest.mark.slow
def test_bad_teacher_settings(teacher, tmp_path):
  c = _student(teacher, "hard")
  c.task_kwargs.kind = "medium"
  with pytest.raises(UserError, match="kind='medium'"):
    DistillationTask(c, _Info(), build_model(c, 10))
  # A teacher trained on another number of classes: refused before reading weights.
  other = tmp_path / "other"
  os.makedirs(other)
  cfg = json.load(open(os.path.join(teacher, "config.json")))
  cfg["model"]["num_classes"] = 7
  json.dump(cfg, open(other / "config.json", "w"))
  c = _student(str(other), "hard")
  with pytest.raises(UserError, match="predicts 7 classes but the dataset 'digits' has 10"):
    DistillationTask(c, _Info(), build_model(c, 10))
  c = _student(str(tmp_path / "missing"), "soft")
  with pytest.raises(UserError, match="no config.json"):
    DistillationTask(c, _Info(), build_model(c, 10))
  # Feature MSE between features of different widths: refused before compile.
  c = _student(teacher, "hard")
  c.task_kwargs.feature_weight = 1.0
  with pytest.raises(UserError, match="feature MSE needs the same shape"):
    train_and_evaluate(c, str(tmp_path / "f"))
