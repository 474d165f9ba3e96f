"""Memory plan of a run on a mesh, before renting the hardware.

    python -m vitjax.tools.plan --config=configs/vit_g14.py --devices=64 \\
        --config.sharding.mesh="(('fsdp', -1),)" --config.sharding.rules="(('.*', 'fsdp'),)"

For a config and its mesh (`config.sharding`; `--devices=N` simulates N CPU
devices) it prints, per device: the bytes of the parameters, the optimizer
state and the rest of the train state (from their shardings: exact), and the
compiled train step's argument, output and temporary bytes (XLA's memory
analysis of the step compiled for that mesh), then whether a device of each
`--device_gb` size holds it. Nothing is allocated and no data is read (the
data set's class count comes from `--num_classes` when it is not on this
machine). One JSON line per plan goes to stdout with `--json`.
"""

import json
import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_DEVICES = flags.DEFINE_integer("devices", 0, "Simulate this many CPU devices (0: the real ones).")
_NUM_CLASSES = flags.DEFINE_integer("num_classes", 1000,
                                    "Classes, when the config's data set is not on this machine.")
_DEVICE_GB = flags.DEFINE_list("device_gb", ["16", "32", "80"], "Device memory sizes to check.")
_COMPILE = flags.DEFINE_bool("compile", True, "Compile the step for its memory analysis.")
_JSON = flags.DEFINE_bool("json", False, "Print one JSON line instead of the table.")

GiB = 2 ** 30


def shard_bytes(shapes, shardings) -> int:
  """Per-device bytes of a pytree of ShapeDtypeStructs laid out by `shardings`."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  total = 0
  for shape, sharding in zip(jax.tree.leaves(shapes), jax.tree.leaves(shardings)):
    local = sharding.shard_shape(shape.shape)
    total += int(np.prod(local)) * np.dtype(shape.dtype).itemsize
  return total


def plan(config, num_classes: int = 1000, compile_step: bool = True) -> dict:
  """The memory plan of `config` on its mesh over the current devices (bytes per device)."""
  import jax  # pylint: disable=g-import-not-at-top
  from vitjax import data as data_lib  # pylint: disable=g-import-not-at-top
  from vitjax import sharding as shard_lib  # pylint: disable=g-import-not-at-top
  from vitjax.errors import UserError  # pylint: disable=g-import-not-at-top
  from vitjax.train import build_run  # pylint: disable=g-import-not-at-top
  info = None
  try:
    from vitjax.tasks import get_task  # pylint: disable=g-import-not-at-top
    info = get_task(config.task).dataset_info(config)
  except UserError:  # the data set is not here: plan with a stand-in of its size
    info = data_lib.DatasetInfo(num_classes=num_classes, num_train_examples=1_281_167,
                                num_eval_examples=50_000, class_names=())
  run = build_run(config, info=info)
  shapes, sh = run.state_shapes, run.state_sharding
  out = {
      "model": config.model_name, "devices": jax.device_count(),
      "mesh": {k: int(v) for k, v in run.mesh.shape.items()},
      "params_total": shard_bytes(shapes.params, jax.tree.map(
          lambda s: shard_lib.replicated(run.mesh), sh.params)),
      "params": shard_bytes(shapes.params, sh.params),
      "opt_state": shard_bytes(shapes.opt_state, sh.opt_state),
      "other_state": (shard_bytes(shapes.ema_params, sh.ema_params) +
                      shard_bytes(shapes.model_state, sh.model_state) +
                      shard_bytes(shapes.task_state, sh.task_state)),
  }
  if compile_step:
    jitted, consts = run.jit_train_step()
    batch = run.task.example_batch(config.batch_size)
    args = (shapes, batch) if consts is None else (shapes, batch, consts)
    mem = jitted.lower(*args).compile().memory_analysis()
    out.update(step_arguments=int(mem.argument_size_in_bytes),
               step_outputs=int(mem.output_size_in_bytes),
               step_aliased=int(mem.alias_size_in_bytes),
               step_temporaries=int(mem.temp_size_in_bytes))
    out["peak"] = (out["step_arguments"] + out["step_outputs"] - out["step_aliased"] +
                   out["step_temporaries"])
  else:
    out["peak"] = out["params"] + out["opt_state"] + out["other_state"]
  return out


def main(argv):
  del argv
  from vitjax.errors import UserError  # pylint: disable=g-import-not-at-top
  try:
    p = plan(_CONFIG.value, _NUM_CLASSES.value, _COMPILE.value)
  except UserError as e:
    sys.stderr.write(f"vitjax error: {e}\n")
    sys.exit(2)
  p["fits_gb"] = {gb: p["peak"] <= float(gb) * GiB for gb in _DEVICE_GB.value}
  if _JSON.value:
    print(json.dumps(p))
    return
  print(f"{p['model']} on {p['devices']} devices, mesh {p['mesh']} (per device):")
  for k in ("params", "opt_state", "other_state", "step_arguments", "step_outputs",
            "step_aliased", "step_temporaries", "peak"):
    if k in p:
      print(f"  {k:18s} {p[k] / GiB:10.3f} GiB")
  print("  fits: " + ", ".join(f"{gb} GB: {'yes' if ok else 'no'}"
                               for gb, ok in p["fits_gb"].items()))


def _simulate_devices(argv):
  """--devices=N must reach XLA before JAX starts."""
  for a in argv:
    if a.startswith("--devices="):
      n = int(a.split("=", 1)[1])
      if n > 0:
        flags_ = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = f"{flags_} --xla_force_host_platform_device_count={n}"
        os.environ.setdefault("JAX_PLATFORMS", "cpu")


if __name__ == "__main__":
  _simulate_devices(sys.argv)
  app.run(main)
