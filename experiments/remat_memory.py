"""Peak training memory with and without per-block remat, on XLA:CPU.

Each variant runs in its own process (so compile memory, allocator caches and
XLA flags do not leak between them) and reports:
  * XLA's compile-time estimate, `jit(step).lower(...).compile().memory_analysis()`:
    temp, argument and output bytes;
  * the runtime peak without compilation: once the step is compiled, the
    kernel's resident-set high-water mark is reset (`/proc/self/clear_refs`
    <- 5), `--steps` steps run, then VmHWM is read from /proc/self/status
    ('hwm_mb'); 'step_peak_mb' is VmHWM minus the resident set right after
    compiling (what running the step adds on top of params, optimizer state,
    inputs and whatever the compiler left resident; glibc is told to mmap
    every block over 128 KiB, so XLA's big buffers are fresh pages, not
    reused compiler heap);
  * the losses of those steps (same data, params and dropout keys in every
    variant, so remat must give the same losses).

Variants: remat off / on (`model.remat`), each with XLA:CPU's default
scheduler and with `--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED`
(the default one orders the graph for concurrency, see remat_memory.md).

  nice -n 19 python experiments/remat_memory.py              # all, table + JSON
  nice -n 19 python experiments/remat_memory.py --models=quickstart
"""

import argparse
import itertools
import json
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "remat_memory.json")
MEMORY_SCHEDULER = "--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"

# label -> (registry name, batch, image size, model overrides)
MODELS = {
    "vit_s16": ("vit_small_patch16_224", 16, 224, {}),
    "quickstart": ("vit_quickstart", 1024, 16, dict(hidden_size=64, mlp_dim=128)),
}
SCHEDULERS = {"default": "", "memory": MEMORY_SCHEDULER}


def _status_mb(key):
  for line in open("/proc/self/status"):
    if line.startswith(key + ":"):
      return int(line.split()[1]) / 1024
  raise KeyError(key)


def worker(label, remat, scan, steps):
  """One variant in this process; prints one JSON line."""
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from experiments.benchmark import make_train_step  # pylint: disable=g-import-not-at-top
  from vitjax.models import create_model  # pylint: disable=g-import-not-at-top

  name, batch, size, kw = MODELS[label]
  model = create_model(name, remat=remat, scan_blocks=scan, drop_path_rate=0.1, **kw)
  x = jax.random.normal(jax.random.PRNGKey(0), (batch, size, size, 3))
  y = jax.random.randint(jax.random.PRNGKey(1), (batch,), 0, model.num_classes)
  tx = optax.adamw(1e-3)
  step = make_train_step(model, tx)

  p = jax.jit(model.init)(jax.random.PRNGKey(2), x[:1])["params"]
  opt = tx.init(p)
  t0, c0 = time.time(), time.process_time()
  compiled = jax.jit(step, donate_argnums=(0, 1)).lower(
      p, opt, x, y, jax.random.PRNGKey(3)).compile()
  compile_s, compile_cpu_s = time.time() - t0, time.process_time() - c0
  m = compiled.memory_analysis()
  row = {"model": label, "remat": remat, "scan_blocks": scan, "batch": batch, "image_size": size,
         "xla_flags": os.environ.get("XLA_FLAGS", ""),
         "temp_mb": m.temp_size_in_bytes / 2**20,
         "args_mb": m.argument_size_in_bytes / 2**20,
         "outputs_mb": m.output_size_in_bytes / 2**20,
         "compile_wall_s": round(compile_s, 1), "compile_cpu_s": round(compile_cpu_s, 1),
         "maxrss_after_compile_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
  row["xla_peak_mb"] = row["temp_mb"] + row["args_mb"] + row["outputs_mb"]
  with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset VmHWM to the current resident set: compilation is over
  rss0 = _status_mb("VmRSS")
  losses = []
  t0, c0 = time.time(), time.process_time()
  for i in range(steps):
    p, opt, loss = compiled(p, opt, x, y, jax.random.PRNGKey(10 + i))
    losses.append(float(loss))
  row["step_wall_s"] = round((time.time() - t0) / steps, 2)
  row["step_cpu_s"] = round((time.process_time() - c0) / steps, 2)
  row["rss_after_compile_mb"] = rss0
  row["rss_after_steps_mb"] = _status_mb("VmRSS")
  row["hwm_mb"] = _status_mb("VmHWM")
  row["step_peak_mb"] = row["hwm_mb"] - rss0
  row["losses"] = losses
  print("RESULT " + json.dumps(row), flush=True)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--models", default="quickstart,vit_s16")
  ap.add_argument("--schedulers", default="default,memory")
  ap.add_argument("--steps", type=int, default=3)
  ap.add_argument("--layouts", default="unrolled,scan",
                  help="unrolled: a Python loop of blocks; scan: model.scan_blocks")
  ap.add_argument("--worker", default="", help="internal: label,remat,scan")
  args = ap.parse_args()
  if args.worker:
    label, remat, scan = args.worker.split(",")
    worker(label, remat == "1", scan == "1", args.steps)
    return

  rows = []
  for label in args.models.split(","):
    for sched, layout, remat in itertools.product(
        args.schedulers.split(","), args.layouts.split(","), (0, 1)):
      env = dict(os.environ, XLA_FLAGS=SCHEDULERS[sched],
                 PYTHONPATH=os.path.dirname(HERE),
                 MALLOC_MMAP_THRESHOLD_="131072")  # large buffers: mmap, given back
      cmd = [sys.executable, os.path.abspath(__file__), f"--worker={label},{remat},{int(layout == 'scan')}",
             f"--steps={args.steps}"]
      res = subprocess.run(cmd, env=env, capture_output=True, text=True,
                           cwd=os.path.dirname(HERE), check=False)
      line = [l for l in res.stdout.splitlines() if l.startswith("RESULT ")]
      if not line:
        print(res.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"variant {label} {layout} remat={remat} {sched} failed")
      row = json.loads(line[-1][len("RESULT "):])
      row["scheduler"], row["layout"] = sched, layout
      rows.append(row)
      print(json.dumps(row), flush=True)

  print(f"\n{'model':<11} {'sched':<8} {'layout':<9} {'remat':<5} {'XLA temp':>9} {'XLA peak':>9} "
        f"{'VmHWM':>8} {'step peak':>9} {'s/step cpu':>10}  losses")
  for r in rows:
    print(f"{r['model']:<11} {r['scheduler']:<8} {r['layout']:<9} {str(r['remat']):<5} {r['temp_mb']:9.1f} "
          f"{r['xla_peak_mb']:9.1f} {r['hwm_mb']:8.0f} {r['step_peak_mb']:9.0f} "
          f"{r['step_cpu_s']:10.2f}  {', '.join(f'{l:.6f}' for l in r['losses'])}")
  data = {}
  if os.path.exists(OUT):
    with open(OUT) as f:
      data = json.load(f)
  for r in rows:
    data[f"{r['model']}/{r['scheduler']}/{r['layout']}/{'remat' if r['remat'] else 'plain'}"] = r
  with open(OUT, "w") as f:
    json.dump(data, f, indent=1)


if __name__ == "__main__":
  main()
