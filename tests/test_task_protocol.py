"""The task contract (vitjax/tasks/base.py): a task written only against it
trains through the one trainer; every registered task keeps it; task_kwargs
and augmentation settings a task would ignore are refused."""

import dataclasses
import json
import os
import re

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vitjax.config import default_config, validate_config
from vitjax.errors import UserError
from vitjax.tasks import TASKS, Task, get_task, register_task
from vitjax.tasks.base import apply_model
from vitjax.train import train_and_evaluate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _EvenOdd(Task):
  """Digits -> even / odd, using every optional hook of the contract."""

  kwargs = {"loss_weight": 1.0}

  @classmethod
  def dataset_info(cls, config):
    info = super().dataset_info(config)
    return dataclasses.replace(info, num_classes=2, class_names=("even", "odd"))

  def constants(self):
    return {"weight": jnp.float32(self.kw["loss_weight"])}

  def init_task_state(self, params):
    del params
    return {"steps_seen": jnp.zeros((), jnp.int32)}

  def update_task_state(self, task_state, params, task_out, step):
    del params, step
    return {"steps_seen": task_state["steps_seen"] + task_out}

  def train_loss(self, params, model_state, batch, rng, *, consts=None, task_state=None,
                 step=None):
    logits, _, new_state = apply_model(self.model, params, model_state, batch["image"],
                                       train=True, rng=rng)
    y = batch["label"] % 2
    loss = consts["weight"] * jnp.mean(
        optax.softmax_cross_entropy_with_integer_labels(logits, y))
    acc = jnp.mean(jnp.argmax(logits, -1) == y)
    return loss, ({"accuracy": acc, "seen": task_state["steps_seen"].astype(jnp.float32)},
                  new_state, jnp.ones((), jnp.int32))

  def eval_sums(self, params, model_state, batch):
    logits, _, _ = apply_model(self.model, params, model_state, batch["image"], train=False)
    ok = (jnp.argmax(logits, -1) == batch["label"] % 2) * batch["mask"]
    return {"count": jnp.sum(batch["mask"]).astype(jnp.float32), "correct": jnp.sum(ok)}

  def eval_outputs(self, params, model_state, batch):
    del params, model_state
    return {"label": batch["label"], "mask": batch["mask"]}

  def eval_summary(self, sums):
    return {"accuracy": sums["correct"] / max(sums["count"], 1.0)}

  def eval_summary_from_outputs(self, outputs):
    labels = np.concatenate([o["label"][o["mask"].astype(bool)] for o in outputs])
    return {"num_eval_examples": float(len(labels))}


@pytest.fixture
def even_odd():
  register_task("test_even_odd")(_EvenOdd)
  yield _EvenOdd
  TASKS.pop("test_even_odd")


def _config(**task_kwargs):
  c = default_config()
  c.task = "test_even_odd"
  c.task_kwargs.update(task_kwargs)
  c.model.update(hidden_size=16, depth=1, num_heads=2, mlp_dim=32)
  c.input.update(image_size=8, train_augment="none", flip=False)
  c.batch_size, c.eval_batch_size = 64, 120
  c.total_steps, c.log_every_steps, c.eval_every_steps = 40, 20, 40
  c.checkpoint_every_steps = 40
  c.optimizer.learning_rate = 3e-3
  c.progress_bar = False
  return c


def test_a_new_task_trains_through_the_trainer_with_every_hook(even_odd, tmp_path):
  del even_odd
  final = train_and_evaluate(_config(loss_weight=1.0), str(tmp_path))
  assert final["eval/accuracy"] > 0.6  # even / odd is learnable; chance is 0.5
  assert final["eval/num_eval_examples"] == 360.0  # eval_outputs reached the host
  rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  seen = [r["train/seen"] for r in rows if "train/seen" in r]
  # The task state counted the steps before each logged window: mean of 0..19, 20..39.
  np.testing.assert_allclose(seen, [9.5, 29.5])


def test_a_new_tasks_kwargs_are_read_strictly(even_odd):
  del even_odd
  with pytest.raises(UserError, match=r"task_kwargs \['loss_wieght'\].*Did you mean "
                     r"task_kwargs.loss_weight"):
    validate_config(_config(loss_wieght=2.0), 1)


def test_a_task_without_the_required_hooks_cannot_be_built():
  class Incomplete(Task):
    def eval_sums(self, params, model_state, batch):
      return {}

  with pytest.raises(TypeError, match="train_loss"):
    Incomplete(default_config(), None, None)
  with pytest.raises(TypeError, match="subclass"):
    register_task("test_not_a_task")(object)


def test_unknown_task_names_the_nearest():
  with pytest.raises(UserError, match="Did you mean 'segmentation'"):
    get_task("segmentaton")


@pytest.mark.parametrize("name", sorted(n for n in TASKS if not n.startswith("test_")))
def test_every_registered_task_keeps_the_contract(name):
  cls = get_task(name)
  assert issubclass(cls, Task) and cls.name == name
  assert not cls.__abstractmethods__
  assert not set(cls.kwargs) & set(cls.data_kwargs)
  c = default_config()
  c.task = name
  c.task_kwargs.not_a_setting_of_any_task = 1
  with pytest.raises(UserError, match=f"not {name} settings"):
    cls.read_kwargs(c)


def test_augmentation_a_task_would_ignore_is_refused():
  for name, cls in TASKS.items():
    c = default_config()
    c.task = name
    c.augment.mixup_alpha = 0.2
    if cls.mixes_batches:
      cls.check_config(c)
    else:
      with pytest.raises(UserError, match="Mixup / CutMix work with the tasks"):
        cls.check_config(c)
    c.augment.mixup_alpha = 0.0
    c.augment.randaugment_layers = 2
    if cls.host_augment:
      cls.check_config(c)
    else:
      with pytest.raises(UserError, match="would not apply them"):
        cls.check_config(c)
  # Detection and mask classification used to accept and ignore RandAugment.
  assert not TASKS["detection"].host_augment and not TASKS["mask_classification"].host_augment
  assert TASKS["classification"].mixes_batches and TASKS["multilabel"].mixes_batches


def test_detection_and_segmentation_kwargs_are_strict():
  c = default_config()
  c.task = "detection"
  c.task_kwargs.giou_cots = 2.0
  with pytest.raises(UserError, match="Did you mean task_kwargs.giou_cost"):
    validate_config(c, 1)
  c = default_config()
  c.task = "segmentation"
  c.task_kwargs.ignore_idx = 0
  with pytest.raises(UserError, match="Did you mean task_kwargs.ignore_index"):
    validate_config(c, 1)


def _source(path):
  with open(os.path.join(ROOT, path)) as f:
    return f.read()


def test_the_trainer_and_config_know_no_task_by_name():
  train_src = _source("vitjax/train.py")
  assert not re.search(r"hasattr\(task", train_src)
  config_src = _source("vitjax/config.py")
  for name in TASKS:
    uses = [l for l in config_src.splitlines() if f'"{name}"' in l or f"'{name}'" in l]
    # The only mention allowed: the default value of config.task.
    assert all(l.strip().startswith("c.task = ") for l in uses), (name, uses)
  for f in sorted(os.listdir(os.path.join(ROOT, "vitjax", "tasks"))):
    if f.endswith(".py"):
      assert not re.search(r"(from|import) vitjax\.train\b", _source(f"vitjax/tasks/{f}")), f
