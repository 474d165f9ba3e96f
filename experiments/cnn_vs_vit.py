"""CNN versus ViT on the embedded UCI digits, with the same training budget.

  python experiments/cnn_vs_vit.py [--seeds 0,1,2] [--epochs 60] [--out experiments]

Each model is trained by its own digits config through `python -m vitjax.main`
(the one trainer), with the same number of epochs, batch size, optimizer
(AdamW, 50 warmup steps, cosine), weight decay and label smoothing
(vitjax.config.digits_recipe) and only the seed changed between runs.
Reported: test accuracy on the 360 held-out digits (mean +- std over the
seeds), parameters, forward FLOPs per image (XLA's cost analysis of the
compiled forward) and inference images/s (batch 256, jitted, median of 5).
Writes cnn_vs_vit.md into --out; every finished run is cached in
cnn_vs_vit_runs.json there (keyed by config, seed and epochs), so an
interrupted comparison resumes where it stopped.
"""

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from vitjax.metric_writer import read_metrics  # pylint: disable=g-import-not-at-top
from vitjax.train import build_model  # pylint: disable=g-import-not-at-top

# (label, config file[:arg], family).
RUNS = [
    ("ResNet-18 (1/4 width)", "resnet_digits", "CNN"),
    ("EfficientNet-B0 (x0.25 width)", "efficientnet_digits", "CNN"),
    ("ViT (quickstart)", "quickstart", "ViT"),
    ("ViT (ResNet-sized)", "quickstart:resnet_size", "ViT"),
    ("MobileViT-XXS", "mobilevit_digits", "hybrid"),
    ("CrossViT (tiny dims)", "crossvit_digits", "ViT"),
]


def load_config(spec):
  name, _, arg = spec.partition(":")
  path = os.path.join(ROOT, "configs", name + ".py")
  if not os.path.exists(path):
    return None
  s = importlib.util.spec_from_file_location(name, path)
  mod = importlib.util.module_from_spec(s)
  s.loader.exec_module(mod)
  return mod.get_config(arg or None)


def train(spec, seed, epochs, workdir):
  """One run through the CLI; returns (final test accuracy, wall seconds)."""
  name, _, arg = spec.partition(":")
  cmd = [sys.executable, "-m", "vitjax.main",
         f"--config={ROOT}/configs/{name}.py" + (f":{arg}" if arg else ""),
         f"--workdir={workdir}", f"--config.seed={seed}", f"--config.num_epochs={epochs}",
         "--config.progress_bar=False", "--config.checkpoint_every_steps=100000"]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  t0 = time.time()
  p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
  if p.returncode:
    raise RuntimeError(f"{spec} seed {seed} failed:\n{p.stderr[-3000:]}")
  acc = [m["eval/accuracy"] for m in read_metrics(workdir) if "eval/accuracy" in m][-1]
  return acc, time.time() - t0


def profile(config, batch=256):
  """(params, forward FLOPs per image, inference images/s) of the config's model."""
  model = build_model(config, num_classes=10)
  s = config.input.image_size
  x = jnp.zeros((batch, s, s, 3), jnp.float32)
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), x[:1])
  n_params = sum(int(np.prod(v.shape)) for v in jax.tree_util.tree_leaves(variables["params"]))
  fwd = jax.jit(lambda v, x: model.apply(v, x)[0])
  one = fwd.lower(variables, x[:1]).compile()
  cost = one.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", float("nan")))
  compiled = fwd.lower(variables, x).compile()
  jax.block_until_ready(compiled(variables, x))
  times = []
  for _ in range(5):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(variables, x))
    times.append(time.perf_counter() - t0)
  return n_params, flops, batch / statistics.median(times)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--seeds", default="0,1,2")
  ap.add_argument("--epochs", type=int, default=60)
  ap.add_argument("--only", default="", help="comma-separated config names to run")
  ap.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
  args = ap.parse_args(argv)
  seeds = [int(s) for s in args.seeds.split(",")]
  rows = []
  cache_path = os.path.join(args.out, "cnn_vs_vit_runs.json")
  cache = json.load(open(cache_path)) if os.path.exists(cache_path) else {}
  for label, spec, family in RUNS:
    if args.only and spec not in args.only.split(","):
      continue
    config = load_config(spec)
    if config is None:
      print(f"# {spec}: no such config, skipped", flush=True)
      continue
    accs, walls = [], []
    for seed in seeds:
      key = f"{spec}|{seed}|{args.epochs}"
      if key in cache:
        acc, wall = cache[key]
      else:
        with tempfile.TemporaryDirectory() as wd:
          acc, wall = train(spec, seed, args.epochs, wd)
        cache[key] = (acc, wall)
        with open(cache_path, "w") as f:
          json.dump(cache, f, indent=1)
      accs.append(acc)
      walls.append(wall)
      print(f"{label} seed {seed}: {acc:.4f} ({wall:.0f} s)", flush=True)
    n_params, flops, ips = profile(config)
    rows.append(dict(label=label, family=family, config=spec, accs=accs, walls=walls,
                     params=n_params, flops=flops, ips=ips,
                     image=config.input.image_size))
  lines = [f"# CNN vs ViT on the UCI digits ({args.epochs} epochs each, batch 128, AdamW, "
           f"seeds {args.seeds}; {jax.devices()[0].device_kind}, {os.cpu_count()} cores)", "",
           "| model | family | input | test accuracy (mean +- std) | params | "
           "forward MFLOPs / image | inference images/s | train wall s / run |",
           "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    sd = statistics.stdev(r["accs"]) if len(r["accs"]) > 1 else 0.0
    lines.append(f"| {r['label']} | {r['family']} | {r['image']}x{r['image']} | "
                 f"{100 * statistics.mean(r['accs']):.2f} +- {100 * sd:.2f} | "
                 f"{r['params'] / 1e6:.3f}M | {r['flops'] / 1e6:.1f} | {r['ips']:.0f} | "
                 f"{statistics.mean(r['walls']):.0f} |")
  report = "\n".join(lines) + "\n"
  print(report)
  with open(os.path.join(args.out, "cnn_vs_vit.md"), "w") as f:
    f.write(report)


if __name__ == "__main__":
  main()
