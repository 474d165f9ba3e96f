"""Hungarian matching of predictions to targets (DETR's bipartite set matching).

The assignment runs on the host with scipy's `linear_sum_assignment` (exact,
O(n^3)); `match` wraps it in `jax.pure_callback`, so a set loss calls it from
inside the jitted train step. Only the [B, Q, T] cost matrix crosses to the
host and [B, T] indices come back; no gradient flows through the matching
(the cost is stop-gradient'ed), as in DETR. With a batch sharded over
devices, XLA gathers the (small: B*Q*T floats) cost to one device for the
callback; checked on 2 CPU devices to give the single-device result.

Measured cost (2 shared CPU cores, jitted step that only matches, B=8, Q=100,
T=20 targets per image, all valid, load average ~13): 0.40 ms per call
(median of 50; min 0.37 ms), negligible beside a DETR train step (hundreds
of ms on CPU).
"""

import jax
import jax.numpy as jnp
import numpy as np


def hungarian_match(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Minimum-cost assignment of a [Q, T] cost matrix -> (query_idx, target_idx)."""
  from scipy.optimize import linear_sum_assignment  # pylint: disable=g-import-not-at-top
  cost = np.asarray(cost, np.float64)
  if cost.size == 0:
    return np.zeros(0, np.int64), np.zeros(0, np.int64)
  cost = np.nan_to_num(cost, nan=1e8, posinf=1e8, neginf=-1e8)
  return linear_sum_assignment(cost)


def _host_match(cost: np.ndarray, valid: np.ndarray) -> np.ndarray:
  """[B, Q, T] costs, [B, T] valid -> [B, T] int32 query per target slot (0 if invalid)."""
  cost, valid = np.asarray(cost), np.asarray(valid)
  lead = cost.shape[:-2]
  cost = cost.reshape((-1,) + cost.shape[-2:])
  valid = valid.reshape((-1, valid.shape[-1]))
  out = np.zeros(valid.shape, np.int32)
  for b in range(cost.shape[0]):
    slots = np.nonzero(valid[b])[0]
    if slots.size == 0:
      continue
    rows, cols = hungarian_match(cost[b][:, slots])
    out[b, slots[cols]] = rows
  return out.reshape(lead + (valid.shape[-1],))


def match(cost, target_valid):
  """Jit-compatible matching: cost [B, Q, T], target_valid [B, T] -> query_index [B, T].

  `query_index[b, t]` is the query matched to target slot t of image b;
  invalid slots get 0 (mask them with target_valid). Needs T_valid <= Q.
  """
  cost = jax.lax.stop_gradient(cost).astype(jnp.float32)
  shape = jax.ShapeDtypeStruct(target_valid.shape, jnp.int32)
  return jax.pure_callback(_host_match, shape, cost, target_valid,
                           vmap_method="broadcast_all")


def matched_query_mask(query_index, target_valid, num_queries: int):
  """[B, Q] bool: which queries are matched to a valid target."""
  hits = jax.nn.one_hot(query_index, num_queries, dtype=jnp.float32) * target_valid[..., None]
  return jnp.sum(hits, axis=1) > 0


__all__ = ["hungarian_match", "match", "matched_query_mask"]
