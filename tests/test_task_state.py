"""The trainer's hook for a task's own state (TrainState.task_state)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vitjax import checkpoint as ckpt_lib
from vitjax.tasks import Task
from vitjax.train import TrainState, make_train_step


class _CountingTask(Task):
  """Loss (w - x)^2; state: an EMA of w (a teacher) and the last batch mean."""

  def __init__(self):  # pylint: disable=super-init-not-called
    pass  # no config, dataset or model: the step's hooks only

  def eval_sums(self, params, model_state, batch):  # pragma: no cover (unused)
    raise NotImplementedError

  def eval_summary(self, sums):  # pragma: no cover (unused)
    raise NotImplementedError

  def init_task_state(self, params):
    return {"teacher": params, "seen": jnp.zeros(())}

  def train_loss(self, params, model_state, batch, rng, *, consts=None, task_state=None,
                 step=None):
    del rng, consts
    loss = jnp.mean((params["w"] - batch["x"]) ** 2) + 0.0 * task_state["seen"]
    return loss, ({"step_seen": step.astype(jnp.float32)}, model_state,
                  jnp.mean(batch["x"]))

  def update_task_state(self, task_state, params, task_out, step):
    del step
    teacher = jax.tree.map(lambda t, p: 0.5 * t + 0.5 * p, task_state["teacher"], params)
    return {"teacher": teacher, "seen": task_out}


def _state(tx, task):
  p = {"w": jnp.zeros(())}
  return TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=tx.init(p),
                    model_state={}, nonfinite_step=jnp.full((), -1, jnp.int32),
                    task_state=task.init_task_state(p))


def test_task_state_updated_after_the_step_and_task_out_averaged_over_micro_batches():
  task, tx = _CountingTask(), optax.sgd(0.5)
  batch = {"x": jnp.array([1.0, 3.0, 5.0, 7.0])}
  for accum in (1, 2):
    step = jax.jit(make_train_step(task, tx, lambda s: 0.5, jax.random.PRNGKey(0),
                                   accum_steps=accum))
    state, metrics = step(_state(tx, task), batch)
    # grad of mean (w - x)^2 at w=0 is -2 * mean(x) = -8 -> w = 4.
    np.testing.assert_allclose(state.params["w"], 4.0, rtol=1e-6)
    np.testing.assert_allclose(state.task_state["teacher"]["w"], 2.0, rtol=1e-6)
    np.testing.assert_allclose(state.task_state["seen"], 4.0, rtol=1e-6)
    assert float(metrics["step_seen"]) == 0.0


def test_task_state_kept_on_a_nonfinite_step():
  task, tx = _CountingTask(), optax.sgd(0.5)
  step = jax.jit(make_train_step(task, tx, lambda s: 0.5, jax.random.PRNGKey(0)))
  state, _ = step(_state(tx, task), {"x": jnp.array([jnp.nan, 1.0])})
  assert int(state.nonfinite_step) == 0
  assert float(state.task_state["teacher"]["w"]) == 0.0 and float(state.task_state["seen"]) == 0


def test_task_state_saved_and_restored_with_the_checkpoint(tmp_path):
  task, tx = _CountingTask(), optax.sgd(0.5)
  step = jax.jit(make_train_step(task, tx, lambda s: 0.5, jax.random.PRNGKey(0)))
  state, _ = step(_state(tx, task), {"x": jnp.array([2.0, 6.0])})
  ck = ckpt_lib.Checkpointer(str(tmp_path))
  ck.save(1, state, force=True)
  ck.wait()
  restored = ck.restore(_state(tx, task))
  ck.close()
  np.testing.assert_allclose(restored.task_state["teacher"]["w"],
                             state.task_state["teacher"]["w"])
  np.testing.assert_allclose(restored.task_state["seen"], 4.0)
