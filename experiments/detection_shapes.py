"""Trains a detection (or segmentation) config on the embedded shapes set within a
wall-time budget and writes experiments/detection_shapes.md (box AP / AP50 on the
held-out images, or with --metrics any eval metrics such as miou,pq; wall and CPU
time, load average, steps/s).

  python experiments/detection_shapes.py --config=configs/detr_shapes.py \
      [--budget_minutes=30] [--workdir=/tmp/detection_shapes] [--out=...md] \
      [--config.total_steps=...] (further --config.k=v overrides go to vitjax.main)
  python experiments/detection_shapes.py --config=configs/maskformer_shapes.py \
      --budget_minutes=15 --metrics=miou,pixel_accuracy,pq,sq,rq --out=...md

The run is `python -m vitjax.main` (niced); at the budget it gets SIGTERM (the
trainer saves a checkpoint and stops), so the table holds every evaluation
reached within the budget. CPU time is the child's user + system time
(getrusage(RUSAGE_CHILDREN)); the load average is sampled every poll, as wall
time on shared cores is inflated by other work.
"""

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--config", default="configs/detr_shapes.py")
  ap.add_argument("--workdir", default="/tmp/detection_shapes")
  ap.add_argument("--budget_minutes", type=float, default=30.0)
  ap.add_argument("--out", default=os.path.join(ROOT, "experiments", "detection_shapes.md"))
  ap.add_argument("--nice", type=int, default=5)
  ap.add_argument("--metrics", default="ap50,ap,ap75",
                  help="comma-separated eval metrics for the table; the first one picks "
                       "the best evaluation")
  args, overrides = ap.parse_known_args(argv)
  keys = args.metrics.split(",")
  if os.path.exists(os.path.join(args.workdir, "metrics.jsonl")):
    sys.exit(f"{args.workdir} already holds a run; pick a new --workdir.")
  cmd = ["nice", "-n", str(args.nice), sys.executable, "-m", "vitjax.main",
         f"--config={args.config}", f"--workdir={args.workdir}", *overrides]
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  start = time.time()
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
  seen, evals, loads, stopped = 0, [], [], False
  metrics = os.path.join(args.workdir, "metrics.jsonl")
  while True:
    done = proc.poll() is not None
    loads.append(os.getloadavg()[0])
    if os.path.exists(metrics):
      with open(metrics) as f:
        lines = f.readlines()
      for line in lines[seen:]:
        rec = json.loads(line)
        if f"eval/{keys[0]}" in rec:
          evals.append(dict(rec, wall_s=time.time() - start))
      seen = len(lines)
    if done:
      break
    if not stopped and time.time() - start > args.budget_minutes * 60:
      proc.send_signal(signal.SIGTERM)
      stopped = True
    time.sleep(5)
  wall = time.time() - start
  ru = resource.getrusage(resource.RUSAGE_CHILDREN)
  cpu = ru.ru_utime + ru.ru_stime
  recs = [json.loads(l) for l in open(metrics)] if os.path.exists(metrics) else []
  compile_s = next((r["train/compile_time_s"] for r in recs if "train/compile_time_s" in r), 0)
  steps = max((r["step"] for r in recs if "train/loss" in r), default=0)
  ips = [r["train/images_per_s"] for r in recs if "train/images_per_s" in r][1:]
  final_loss = next((r["train/loss"] for r in reversed(recs) if "train/loss" in r), float("nan"))
  def fmt(e, k):
    v = e.get(f"eval/{k}")
    return "-" if v is None else f"{v:.3f}"
  rows = "\n".join(
      f"| {e['step']} | {e['wall_s'] / 60:.1f} | " + " | ".join(fmt(e, k) for k in keys) +
      f" | {fmt(e, 'loss')} |" for e in evals)
  best = max(evals, key=lambda e: e[f"eval/{keys[0]}"]) if evals else None
  header = "| step | wall min | " + " | ".join(keys) + " | eval loss |"
  rule = "|---" * (len(keys) + 3) + "|"
  text = f"""# {os.path.basename(args.config)} on the embedded shapes set

Command: `python experiments/detection_shapes.py --config={args.config} {' '.join(overrides)}`
(budget {args.budget_minutes:g} min wall time; SIGTERM at the budget{', reached' if stopped else ', not reached'}).

- steps done: {steps} (return code {proc.returncode})
- wall time: {wall / 60:.1f} min (compile {compile_s:.0f} s); CPU time (user + sys):
  {cpu / 60:.1f} min = {cpu / max(wall, 1):.2f} cores busy on average
- load average (1 min) during the run: mean {sum(loads) / len(loads):.1f}, max {max(loads):.1f}
  (2 cores shared with other work: wall time is inflated)
- throughput: {(sum(ips) / len(ips) if ips else 0):.1f} images/s in training =
  {steps / max(wall - compile_s, 1):.2f} steps/s over the run (eval and checkpoints included)
- final train loss: {final_loss:.3f}

{header}
{rule}
{rows}

Best {keys[0]} within the budget: {f"{best[f'eval/{keys[0]}']:.3f} at step {best['step']} (" + ", ".join(f"{k} {fmt(best, k)}" for k in keys[1:]) + ")" if best else "no evaluation reached"}.
"""
  with open(args.out, "w") as f:
    f.write(text)
  print(text)


if __name__ == "__main__":
  main()
