"""Per-device memory of ViT-B/16 .. ViT-g/14 training under data parallelism
vs FSDP on simulated 8- and 64-device meshes (vitjax.tools.plan, XLA's memory
analysis of the compiled step), and which fit 16 / 32 / 80 GB devices.

    python -m experiments.memory_plan --out=experiments/memory_plan.md

Every case runs `vitjax.tools.plan` in its own process (the simulated device
count is fixed when JAX starts): AdamW float32 state for B/L/H (their
ImageNet configs), configs/vit_g14.py's Adafactor with bfloat16 first moments
for g; bf16 compute, the blocks scanned and rematerialised for all four, a
batch of 8 images per data-parallel shard at 224 px.
"""

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = (("ViT-B/16", "configs/vit_b16.py"), ("ViT-L/16", "configs/vit_l16.py"),
          ("ViT-H/14", "configs/vit_h14.py"),
          ("ViT-g/14", "configs/vit_g14.py"))
GiB = 2 ** 30


def plan_case(config, devices, strategy, per_shard_batch=8, compile_step=True):
  """One plan in a fresh process: a dict of per-device bytes."""
  fsdp = strategy == "fsdp"
  overrides = [
      f"--config.sharding.mesh={(('fsdp', -1),) if fsdp else (('data', -1),)!r}",
      f"--config.sharding.rules={((('.*', 'fsdp'),) if fsdp else ())!r}",
      f"--config.batch_size={per_shard_batch * devices}",
      f"--config.eval_batch_size={per_shard_batch * devices}",
      "--config.mixed_precision=bf16", "--config.model.scan_blocks=True",
      "--config.model.remat=True"]
  cmd = [sys.executable, "-m", "vitjax.tools.plan", f"--config={os.path.join(ROOT, config)}",
         f"--devices={devices}", "--json", f"--{'' if compile_step else 'no'}compile"]
  env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
  p = subprocess.run(cmd + overrides, cwd=ROOT, env=env, capture_output=True, text=True,
                     timeout=3600)
  if p.returncode:
    raise RuntimeError(p.stderr[-3000:])
  return json.loads(p.stdout.strip().splitlines()[-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--devices", default="8,64")
  parser.add_argument("--out", default="")
  parser.add_argument("--nocompile", action="store_true", help="state bytes only")
  args = parser.parse_args()
  rows = []
  for entry in MODELS:
    name, config = entry
    for devices in (int(d) for d in args.devices.split(",")):
      for strategy in ("dp", "fsdp"):
        t0 = time.time()
        p = plan_case(config, devices, strategy, compile_step=not args.nocompile)
        p.update(name=name, strategy=strategy, seconds=round(time.time() - t0))
        rows.append(p)
        print(json.dumps(p), flush=True)
  lines = ["| model | devices | strategy | params | opt state | step args | step temps | "
           "peak | fits 16 / 32 / 80 GB |", "|---|---|---|---|---|---|---|---|---|"]
  for p in rows:
    g = lambda k: f"{p[k] / GiB:.2f}" if k in p else "-"
    fits = " / ".join("yes" if p["peak"] <= gb * GiB else "no" for gb in (16, 32, 80))
    lines.append(f"| {p['name']} | {p['devices']} | {p['strategy']} | {g('params')} | "
                 f"{g('opt_state')} | {g('step_arguments')} | {g('step_temporaries')} | "
                 f"{g('peak')} | {fits} |")
  table = "\n".join(lines)
  print(table)
  if args.out:
    with open(args.out, "w") as f:
      f.write("# Memory plan: per-device GiB of ViT training, data parallel vs FSDP\n\n"
              f"Command: `python -m experiments.memory_plan{' --nocompile' if args.nocompile else ''}"
              f" --devices={args.devices}` (simulated CPU devices; XLA:CPU's memory analysis "
              "of the compiled step, so temporaries are the CPU compiler's figures; an "
              "accelerator's differ).\n\n" + __doc__.split("\n\n", 2)[2] + "\n" + table + "\n")


if __name__ == "__main__":
  main()
