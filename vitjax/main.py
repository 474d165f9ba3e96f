"""Command line: `python -m vitjax.main --config=configs/NAME.py[:ARGS] --workdir=DIR`.

Any config field can be overridden, e.g. `--config.batch_size=64`. Several
processes (hosts) are joined with `jax.distributed.initialize`: from the flags
below, the JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID
environment variables, or the cluster's own discovery (Cloud TPU, SLURM).
"""

import logging
import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/NAME.py[:ARGS]).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints and metrics go.")
_COORD = flags.DEFINE_string("coordinator_address", None,
                             "host:port of process 0 for multi-process runs.")
_NPROC = flags.DEFINE_integer("num_processes", None, "Number of processes (hosts).")
_PID = flags.DEFINE_integer("process_id", None, "This process's index.")
_CPU_COLLECTIVES = flags.DEFINE_string(
    "cpu_collectives", "gloo", "Cross-process collectives on CPU ('gloo' or 'mpi').")
_HEARTBEAT = flags.DEFINE_integer(
    "heartbeat_timeout", 120,
    "Multi-process runs: seconds without a heartbeat after which a process counts as lost "
    "and the others stop (instead of waiting forever in a collective).")


def init_distributed(coordinator=None, num_processes=None, process_id=None,
                     cpu_collectives="gloo", heartbeat_timeout=120):
  """Joins a multi-process run when one is described; no-op otherwise."""
  import jax  # pylint: disable=g-import-not-at-top
  coordinator = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS")
  num_processes = num_processes or os.environ.get("JAX_NUM_PROCESSES")
  if process_id is None and os.environ.get("JAX_PROCESS_ID") is not None:
    process_id = int(os.environ["JAX_PROCESS_ID"])
  if coordinator and num_processes and int(num_processes) > 1:
    if jax.config.jax_platforms in (None, "", "cpu") and cpu_collectives:
      jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    jax.distributed.initialize(coordinator, int(num_processes), process_id,
                               heartbeat_timeout_seconds=int(heartbeat_timeout))
  elif os.environ.get("TPU_WORKER_HOSTNAMES") or os.environ.get("SLURM_JOB_ID"):
    jax.distributed.initialize()  # cluster auto-detection


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from vitjax.errors import UserError  # pylint: disable=g-import-not-at-top
  logging.getLogger().setLevel(logging.WARNING)
  logging.getLogger("vitjax").setLevel(logging.INFO)
  if _CONFIG.value is None or not _WORKDIR.value:
    sys.stderr.write("error: --config and --workdir are required, e.g.\n"
                     "  python -m vitjax.main --config=configs/quickstart.py "
                     "--workdir=/tmp/quickstart\n")
    sys.exit(2)
  try:
    init_distributed(_COORD.value, _NPROC.value, _PID.value, _CPU_COLLECTIVES.value,
                     _HEARTBEAT.value)
    import jax  # pylint: disable=g-import-not-at-top
    from vitjax import allocator  # pylint: disable=g-import-not-at-top
    hint = allocator.hint(jax.default_backend())
    logging.getLogger("vitjax").info(hint or f"malloc: {allocator.current()}")
    from vitjax.train import train_and_evaluate  # pylint: disable=g-import-not-at-top
    final = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except UserError as e:
    sys.stderr.write(f"\nvitjax error: {e}\n")
    sys.stderr.flush()
    sys.stdout.flush()
    # Leave without the interpreter's shutdown: background threads of native
    # libraries (tf.data, Orbax) may still be unwinding, and an abort there
    # would bury the message above.
    os._exit(2)
  if final:
    print("final: " + ", ".join(f"{k}={v:.4f}" for k, v in final.items()), flush=True)


def _parse_flags_or_explain(argv):
  """Parses the flags; a bad --config override gets one clear message."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.stderr.write(f"vitjax error: {e}\n")
    sys.exit(2)
  except (KeyError, AttributeError, TypeError, ValueError) as e:
    key = str(e).strip("'\"")
    bad = [a for a in argv[1:] if a.startswith("--config.") and key in a] or [
        a for a in argv[1:] if a.startswith("--config")]
    sys.stderr.write(
        f"vitjax error: cannot apply {' '.join(bad)}: {type(e).__name__}: {key}. "
        "Only fields the config defines can be overridden: see "
        "vitjax/config.py:default_config() and the config file (config.model "
        "lists the model's fields).\n")
    sys.exit(2)


if __name__ == "__main__":
  # tcmalloc when installed: glibc's malloc makes XLA:CPU page-fault on every step.
  from vitjax import allocator  # pylint: disable=g-import-not-at-top
  allocator.prefer_tcmalloc(["-m", "vitjax.main"] + sys.argv[1:])
  app.run(main, flags_parser=_parse_flags_or_explain)
