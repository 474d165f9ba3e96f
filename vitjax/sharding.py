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


class prefetch_to_mesh:  # pylint: disable=invalid-name
  """Moves batches to the devices in a background thread, `size` ahead.

  An iterator; `close()` stops the thread (the trainer calls it on exit, so no
  thread is left inside tf.data when the interpreter shuts down).
  """

  def __init__(self, iterator, mesh, size: int = 2):
    self._queue = queue.Queue(maxsize=size)
    self._stop = threading.Event()
    self._done = object()
    self._thread = threading.Thread(target=self._produce, args=(iterator, mesh),
                                    daemon=True)
    self._thread.start()

  def _put(self, item):
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def _produce(self, iterator, mesh):
    try:
      for batch in iterator:
        if not self._put(to_global_batch(batch, mesh)):
          break
      else:
        self._put(self._done)
    except Exception as e:  # pylint: disable=broad-except
      self._put(e)
    finally:
      close = getattr(iterator, "close", None)
      if close is not None:
        close()

  def __iter__(self):
    return self

  def __next__(self):
    item = self._queue.get()
    if item is self._done:
      raise StopIteration
    if isinstance(item, Exception):
      raise item
    return item

  def close(self):
    self._stop.set()
    self._thread.join(timeout=30)
