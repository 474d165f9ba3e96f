"""Explicit shardings: one data-parallel mesh over every device of every host.

The batch is sharded over the 'data' axis, parameters and optimizer state are
replicated. The same jitted step runs on 1 CPU, 8 simulated devices, a GPU or
a TPU pod; each process feeds its own shard of the global batch.
"""

import queue
import threading

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def create_mesh() -> Mesh:
  return Mesh(np.asarray(jax.devices()), ("data",))


def batch_sharding(mesh):
  return NamedSharding(mesh, P("data"))


def replicated(mesh):
  return NamedSharding(mesh, P())


def to_global_batch(local_batch: dict, mesh) -> dict:
  """Process-local numpy batch -> global jax.Arrays sharded over 'data'."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
      local_batch)


def prefetch_to_mesh(iterator, mesh, size: int = 2):
  """Moves batches to the devices in a background thread, `size` ahead."""
  q = queue.Queue(maxsize=size)
  sentinel = object()

  def producer():
    try:
      for batch in iterator:
        q.put(to_global_batch(batch, mesh))
    except Exception as e:  # pylint: disable=broad-except
      q.put(e)
    q.put(sentinel)

  threading.Thread(target=producer, daemon=True).start()
  while True:
    item = q.get()
    if item is sentinel:
      return
    if isinstance(item, Exception):
      raise item
    yield item
