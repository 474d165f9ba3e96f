"""The trainer's generic eval-output hook: a task's `eval_outputs` per-example
arrays reach `eval_summary_from_outputs` on the host, every batch in order."""

import jax.numpy as jnp
import numpy as np

from vitjax import sharding as shard_lib
from vitjax import train
from vitjax.tasks import Task


class _Plain(Task):
  """Eval-only task: sums count rows."""

  def __init__(self):  # pylint: disable=super-init-not-called
    pass  # no config, dataset or model: only the eval hooks are used

  def train_loss(self, params, model_state, batch, rng, **kw):  # pragma: no cover (unused)
    raise NotImplementedError

  def eval_iterator(self, config, **kw):
    del config, kw
    for i in range(3):
      yield {"x": np.arange(4, dtype=np.float32) + 4 * i, "mask": np.array([1, 1, 1, i < 2])}

  def eval_sums(self, params, model_state, batch):
    del model_state
    return {"count": jnp.sum(batch["mask"]).astype(jnp.float32) * params}

  def eval_summary(self, sums):
    return {"count": sums["count"]}



class _Task(_Plain):
  """... and outputs 2 * x per row."""

  def eval_outputs(self, params, model_state, batch):
    del params, model_state
    return {"y": 2 * batch["x"], "mask": batch["mask"]}

  def eval_summary_from_outputs(self, outputs):
    y = np.concatenate([o["y"][o["mask"].astype(bool)] for o in outputs])
    return {"n_outputs": len(outputs), "y_sum": float(y.sum())}


class _State:
  params, model_state, ema_params = jnp.float32(1.0), {}, None


def test_eval_outputs_reach_the_task():
  mesh = shard_lib.create_mesh()
  task = _Task()
  fn = train.make_eval_fn(task, shard_lib.replicated(mesh))
  out = train.evaluate(fn, _State(), None, mesh, task)
  expected = 2 * (np.arange(12).sum() - 11)  # the last row of batch 3 is padding
  assert out == {"count": 11.0, "n_outputs": 3, "y_sum": float(expected)}


def test_tasks_without_the_hook_are_unchanged():
  mesh = shard_lib.create_mesh()
  task = _Plain()
  fn = train.make_eval_fn(task, shard_lib.replicated(mesh))
  assert train.evaluate(fn, _State(), None, mesh, task) == {"count": 11.0}
