"""Per-block rematerialisation: the same losses step by step. (Peak memory is
measured, not asserted: XLA:CPU's memory analysis shows no saving from remat,
see experiments/compression_digits.md.)"""

import jax
import numpy as np
import optax

from vitjax.models import create_model


def _step_fn(model, tx):
  def step(p, opt, x, y, rng):
    def loss_fn(p):
      logits = model.apply({"params": p}, x, train=True, rngs={"dropout": rng})[0]
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    loss, g = jax.value_and_grad(loss_fn)(p)
    upd, opt = tx.update(g, opt, p)
    return optax.apply_updates(p, upd), opt, loss
  return jax.jit(step)


def test_remat_same_losses():
  kw = dict(patch_size=4, hidden_size=32, depth=4, mlp_dim=64, num_heads=2, num_classes=5,
            drop_path_rate=0.2, dropout=0.1, head_zero_init=False)
  x = jax.random.normal(jax.random.PRNGKey(0), (64, 32, 32, 3))
  y = jax.random.randint(jax.random.PRNGKey(1), (64,), 0, 5)
  tx = optax.adamw(1e-3)
  losses, temp = {}, {}
  for remat in (False, True):
    model = create_model("vit_quickstart", remat=remat, **kw)
    p = model.init(jax.random.PRNGKey(2), x[:1])["params"]
    opt = tx.init(p)
    compiled = _step_fn(model, tx).lower(p, opt, x, y, jax.random.PRNGKey(3)).compile()
    temp[remat] = compiled.memory_analysis().temp_size_in_bytes
    ls = []
    for i in range(3):
      p, opt, loss = compiled(p, opt, x, y, jax.random.PRNGKey(10 + i))
      ls.append(float(loss))
    losses[remat] = ls
  # Same forward and gradients: the first loss agrees to 1e-6; after Adam
  # updates float reassociation drifts them by ~1e-5 at most.
  np.testing.assert_allclose(losses[True][0], losses[False][0], atol=1e-6)
  np.testing.assert_allclose(losses[True], losses[False], atol=3e-5)
  assert temp[True] > 0 and temp[False] > 0
