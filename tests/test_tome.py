"""Token merging (ToMe): a hand-computed matching, size bookkeeping, and
r=0 being the plain model exactly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vitjax.compress.tome import bipartite_soft_matching, merge_tokens
from vitjax.errors import UserError
from vitjax.models import create_model


def test_hand_computed_matching():
  # Tokens 0..5 -> A = {0, 2, 4}, B = {1, 3, 5}. Metric directions:
  # cosines A x B: 0-3 = 1, 2-5 = 0.995, 4-1 = 0.894 (4-5 = 0.447).
  e = np.eye(3, dtype=np.float32)
  metric = np.stack([e[0], e[1], e[2] + 0.1 * e[0], e[0], e[1] + 0.5 * e[2], e[2]])[None]
  x = np.arange(6, dtype=np.float32)[None, :, None] * 10        # values 0, 10, ..., 50
  merge = bipartite_soft_matching(jnp.asarray(metric), r=1)
  # Only the best edge (0 -> 3, cosine 1) merges: kept A = [2, 4], then B = [1, 3+0, 5].
  np.testing.assert_array_equal(merge(x)[0, :, 0], [20, 40, 10, 30 + 0, 50])
  merge2 = bipartite_soft_matching(jnp.asarray(metric), r=2)
  # Next best edge 2 -> 5 (0.995) merges too; 4 (best edge 0.894) is kept.
  np.testing.assert_array_equal(merge2(x)[0, :, 0], [40, 10, 30, 50 + 20])


def test_size_weighted_merge_keeps_total_size():
  r = np.random.RandomState(0)
  b, n, d, p = 2, 17, 8, 1
  x = jnp.asarray(r.randn(b, n, d), jnp.float32)
  size = jnp.ones((b, n))
  total = jnp.sum(x[:, p:] * size[:, p:, None], axis=1)
  for step in range(3):
    metric = jnp.asarray(r.randn(b, x.shape[1], 4), jnp.float32)
    x2, size2 = merge_tokens(x, size, metric, 3, num_prefix=p)
    assert x2.shape == (b, x.shape[1] - 3, d)
    np.testing.assert_allclose(size2.sum(1), n)                  # sizes sum to N
    np.testing.assert_array_equal(x2[:, 0], x[:, 0])             # class token untouched
    np.testing.assert_allclose(jnp.sum(x2[:, p:] * size2[:, p:, None], axis=1), total,
                               rtol=1e-5, atol=1e-5)             # a size-weighted mean
    x, size = x2, size2
  assert float(size.max()) > 1


@pytest.mark.slow
def test_r_zero_is_the_plain_model_and_merging_runs():
  kw = dict(patch_size=4, hidden_size=32, depth=3, mlp_dim=64, num_heads=2, num_classes=5,
            head_zero_init=False)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 32, 32, 3))
  plain = create_model("vit_quickstart", **kw)
  v = plain.init(jax.random.PRNGKey(1), x)
  ref, out = plain.apply(v, x)
  same, _ = create_model("vit_quickstart", tome_r=0, **kw).apply(v, x)
  np.testing.assert_array_equal(same, ref)
  merged, mout = create_model("vit_quickstart", tome_r=8, **kw).apply(v, x)
  assert mout["block_2"].shape == (2, 1 + 64 - 24, 32) and "feature_map" not in mout
  assert merged.shape == ref.shape and np.isfinite(merged).all()
  assert not np.allclose(merged, ref)
  gap = create_model("vit_quickstart", tome_r=8, pool="gap", **kw)
  vg = gap.init(jax.random.PRNGKey(1), x)
  assert np.isfinite(gap.apply(vg, x)[0]).all()
  with pytest.raises(UserError, match="tome_r"):
    create_model("vit_quickstart", tome_r=-1, **kw).apply(v, x)
