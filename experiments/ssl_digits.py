"""Self-supervised pretraining on the embedded UCI digits: every method, frozen
probes and fine-tuning, against a random init and training from scratch.

  python experiments/ssl_digits.py [--epochs 60] [--workdir /tmp/ssl_digits] [--out experiments]
                                   [--only mae,simmim]

For each method whose config exists (configs/<method>_digits.py: MAE,
SimMIM, DINO, MoCo v3), all with configs/quickstart.py's ViT encoder (patch
4, width 64, 4 blocks) and the same budget (--epochs on the 1,437 train
digits, labels unused, batch 128):
1. pretraining through `python -m vitjax.main` (the one trainer);
2. frozen features of the pretrained encoder vs a random init of the same
   model (seed 0): DINO kNN (k=20, T=0.07) and an optax linear probe, on the
   class token ('pre_logits') and the mean patch token ('mean'); train split
   = the 1,437 train digits, test = the 360 held-out ones;
3. fine-tuning: configs/quickstart.py with
   --config.init_from.checkpoint=<the pretraining workdir>, for --epochs,
   against the same config from scratch (run once, shared).
The preprocessed pixels themselves are probed as a reference.

Every finished step (run or probe) is cached in <workdir>/cache.json with
its wall time, its CPU time (children's user + system) and the load average,
so a rerun resumes where it stopped (delete the cache entry or the workdir
to measure again). Writes ssl_digits.md and .json into --out after every
method.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from vitjax import evaluators  # pylint: disable=g-import-not-at-top
from vitjax.metric_writer import read_metrics  # pylint: disable=g-import-not-at-top
from vitjax.tools.probe import load_run  # pylint: disable=g-import-not-at-top

# (method, pretraining config, fine-tuning config): in the table's order.
METHODS = (("mae", "mae_digits", "quickstart"), ("simmim", "simmim_digits", "quickstart"),
           ("dino", "dino_digits", "quickstart"), ("moco_v3", "moco_v3_digits", "quickstart"))
# The feature each method's headline row reads: the class token, except for
# SimMIM, whose loss never reaches the class token and whose paper probes the
# average-pooled tokens. Both features are measured and tabulated for all.
REPORTED = {"simmim": "mean"}


class Cache:
  """name -> result dict, persisted after every entry."""

  def __init__(self, path, read_only=False):
    self.path, self.read_only = path, read_only
    self.data = json.load(open(path)) if os.path.exists(path) else {}

  def get(self, key, fn):
    if self.read_only:
      return self.data.get(key, {"error": "not run yet"})
    if key not in self.data:
      value = fn()
      if os.path.exists(self.path):  # merge: another instance may run other methods
        self.data.update(json.load(open(self.path)))
      self.data[key] = value
      with open(self.path + ".tmp", "w") as f:
        json.dump(self.data, f, indent=2)
      os.replace(self.path + ".tmp", self.path)
    return self.data[key]


def _cpu_s():
  r = resource.getrusage(resource.RUSAGE_CHILDREN)
  s = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime + s.ru_utime + s.ru_stime


def timed(fn):
  """fn() -> its dict result with wall_s, cpu_s and the load average at the end."""
  t0, c0 = time.time(), _cpu_s()
  out = fn()
  return dict(out, wall_s=time.time() - t0, cpu_s=_cpu_s() - c0,
              loadavg=os.getloadavg()[0])


def run_main(config, workdir, *overrides):
  """One run through the CLI; returns its final eval metrics and steps/s."""
  cmd = [sys.executable, "-m", "vitjax.main", f"--config={ROOT}/configs/{config}.py",
         f"--workdir={workdir}", "--config.progress_bar=False"] + [
             f"--config.{o}" for o in overrides]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  t0 = time.time()
  p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
  if p.returncode:
    return {"error": p.stderr.strip().splitlines()[-1][:300] if p.stderr.strip() else "?"}
  final, steps = {}, 0
  for row in read_metrics(workdir):
    final.update({k: v for k, v in row.items() if k.startswith("eval/")})
    steps = max(steps, row.get("step", 0))
  final["steps"] = steps
  final["steps_per_s"] = steps / max(time.time() - t0, 1e-9)
  print(f"{config} -> {workdir}: {final}", flush=True)
  return final


def probe(workdir, random_init, feature):
  config, model, variables = load_run(workdir, random_init=random_init, seed=0)
  return evaluators.probe(model, variables, config, feature=feature)


def write_report(res, args, out):
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "ssl_digits.json"), "w") as f:
    json.dump(res, f, indent=2)
  f3 = lambda x: "-" if x is None else f"{x:.3f}"
  lines = [
      "# Self-supervised pretraining on the digits: frozen probes and fine-tuning",
      "",
      f"`python experiments/ssl_digits.py --epochs {args.epochs}` (2 CPU cores shared with "
      "other jobs; wall s / CPU s / load average per run in ssl_digits.json). Every "
      f"method: quickstart's ViT encoder, {args.epochs} epochs of batch 128 on the 1,437 "
      "train digits without labels; probes on the frozen encoder (360 test digits); "
      f"fine-tuning = configs/quickstart.py for {args.epochs} epochs from the checkpoint.",
      "",
      "Features: 'pre_logits' = class token, 'mean' = mean patch token; * marks the "
      "feature a method is reported on (SimMIM: mean, as its paper's probe; others: "
      "class token).",
      "",
      "| method | features | kNN | kNN random init | kNN gain | linear | linear random init | "
      "fine-tuned | scratch |",
      "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
  scratch = res.get("scratch", {}).get("eval/accuracy")
  done = [n for n in res["methods"] if n in res]
  for name in done:
    m = res[name]
    for feature in evaluators.FEATURES:
      p, r = m.get(f"probe/{feature}", {}), m.get(f"random/{feature}", {})
      ft = m.get("finetune", {})
      star = "*" if REPORTED.get(name, "pre_logits") == feature else ""
      kp, kr = p.get("knn_accuracy"), r.get("knn_accuracy")
      gain = "-" if kp is None or kr is None else f"{kp - kr:+.3f}"
      lines.append(
          f"| {name} | {feature}{star} | {f3(kp)} | {f3(kr)} | {gain} | "
          f"{f3(p.get('linear_accuracy'))} | "
          f"{f3(r.get('linear_accuracy'))} | "
          f"{f3(ft.get('eval/accuracy')) if feature == 'pre_logits' else ''} | "
          f"{f3(scratch) if feature == 'pre_logits' else ''} |")
  px = res.get("pixels", {})
  lines.append(f"| raw pixels | - | {f3(px.get('knn_accuracy'))} | | | "
               f"{f3(px.get('linear_accuracy'))} | | | |")
  lines += ["", "| run | eval metric | steps | wall s | CPU s | steps/s (wall) | load avg |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
  runs = [(f"{n} pretraining", res[n].get("pretrain", {})) for n in done]
  runs += [(f"{n} fine-tuning", res[n].get("finetune", {})) for n in done]
  runs.append(("scratch", res.get("scratch", {})))
  for label, r in runs:
    metric = r.get("eval/accuracy", r.get("eval/loss"))
    num = lambda k, fmt: "-" if r.get(k) is None else format(r[k], fmt)
    lines.append(f"| {label} | {f3(metric)} | {r.get('steps', '-')} | {num('wall_s', '.0f')} | "
                 f"{num('cpu_s', '.0f')} | {num('steps_per_s', '.2f')} | "
                 f"{num('loadavg', '.1f')} |"
                 + (f" error: {r['error']}" if "error" in r else ""))
  with open(os.path.join(out, "ssl_digits.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines), flush=True)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--epochs", type=int, default=60)
  ap.add_argument("--workdir", default="/tmp/ssl_digits")
  ap.add_argument("--out", default=os.path.join(ROOT, "experiments"))
  ap.add_argument("--only", default="", help="comma-separated methods (default: all)")
  ap.add_argument("--report_only", action="store_true",
                  help="write the report from the cached steps; run nothing")
  args = ap.parse_args()
  os.makedirs(args.workdir, exist_ok=True)
  ep = f"num_epochs={args.epochs}"
  w = lambda name: os.path.join(args.workdir, name)
  cache = Cache(w("cache.json"), read_only=args.report_only)
  only = set(filter(None, args.only.split(",")))
  methods = [m for m in METHODS if os.path.exists(os.path.join(ROOT, "configs", m[1] + ".py"))
             and (not only or m[0] in only)]
  res = {"epochs": args.epochs, "methods": [m[0] for m in methods]}

  class Pixels:  # reference: the preprocessed pixels themselves as features
    @staticmethod
    def apply(variables, images, train=False):
      del variables, train
      return None, {"pre_logits": images.reshape(images.shape[0], -1)}

  res["scratch"] = cache.get(f"scratch/{ep}", lambda: timed(
      lambda: run_main("quickstart", w("scratch"), ep)))
  if args.report_only:
    res["pixels"] = cache.get("pixels", None)
  for name, pre_cfg, ft_cfg in methods:
    m = res[name] = {}
    m["pretrain"] = cache.get(f"{name}/pretrain/{ep}", lambda: timed(
        lambda: run_main(pre_cfg, w(name), ep)))
    if "error" in m["pretrain"]:
      write_report(res, args, args.out)
      continue
    if "pixels" not in res and not args.report_only:
      config, _, _ = load_run(w(name), random_init=True)
      res["pixels"] = cache.get("pixels", lambda: evaluators.probe(Pixels(), {}, config))
    for feature in evaluators.FEATURES:
      m[f"probe/{feature}"] = cache.get(f"{name}/probe/{feature}/{ep}", lambda: timed(
          lambda: probe(w(name), False, feature)))
      m[f"random/{feature}"] = cache.get(f"{name}/random/{feature}", lambda: timed(
          lambda: probe(w(name), True, feature)))
    m["finetune"] = cache.get(f"{name}/finetune/{ep}", lambda: timed(
        lambda: run_main(ft_cfg, w(f"{name}_finetune"), ep,
                         f"init_from.checkpoint={w(name)}")))
    write_report(res, args, args.out)
  write_report(res, args, args.out)


if __name__ == "__main__":
  main()
