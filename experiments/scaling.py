"""Forward time and peak memory against input resolution, per attention kind.

  python experiments/scaling.py [--resolutions 224,448,672,896,1024] [--batch 1]
                                [--models vit_small_patch16_224,...] [--out experiments]

For each model (batch 1, fp32, CPU or whatever JAX runs on) and each input
resolution: the median forward wall time of >= 5 runs after a warm-up, and
the peak memory XLA plans for the compiled forward (arguments + outputs +
temporaries, from `compiled.memory_analysis()`: exact for the program, no
allocator noise). A second table times one attention layer alone on growing
token grids (the map a hierarchical model's first stage sees at 224 ... 896).

"Linear" is judged by the cost per token: ratio(r) = (t(r) / t(224)) /
(N(r) / N(224)), N the number of tokens of the first stage; 1.0 is exactly
linear, a quadratic cost grows as N(r) / N(224). Writes scaling.png and
scaling.md (the tables) into --out and prints them.
"""

import argparse
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vitjax.errors import UserError  # pylint: disable=g-import-not-at-top
from vitjax.models import create_model, list_models  # pylint: disable=g-import-not-at-top

# (registry name, attention kind, first-stage stride: tokens = (r / stride)^2).
MODELS = [
    ("vit_small_patch16_224", "global (ViT-S/16)", 16),
    ("swin_tiny_patch4_window7_224", "window 7x7 (Swin-T)", 4),
    ("nat_tiny", "neighborhood k7 (NAT-T)", 4),
    ("dinat_tiny", "dilated neighborhood k7 (DiNAT-T)", 4),
    ("pvt_v2_b2", "spatial reduction (PVTv2-b2)", 4),
    ("pvt_v2_b2_li", "linear SRA, pooled (PVTv2-b2-li)", 4),
    ("cvt_13", "conv projection, kv stride 2 (CvT-13)", 4),
]


def median_time(fn, *args, runs=5, min_time=1.0):
  """Median wall time of `fn(*args)` (blocked), at least `runs` runs after a warm-up."""
  jax.block_until_ready(fn(*args))
  times, start = [], time.perf_counter()
  while len(times) < runs or (time.perf_counter() - start < min_time and len(times) < 50):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def peak_mb(compiled):
  m = compiled.memory_analysis()
  if m is None:
    return float("nan")
  total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
  return (total - getattr(m, "alias_size_in_bytes", 0)) / 2 ** 20


def measure_model(name, resolution, batch):
  model = create_model(name, num_classes=1000)
  x = jnp.zeros((batch, resolution, resolution, 3), jnp.float32)
  # Random weights for this resolution (a learned position embedding has its size).
  params = jax.jit(model.init)(jax.random.PRNGKey(0), x[:1])
  fwd = jax.jit(lambda v, x: model.apply(v, x)[0])
  t0 = time.perf_counter()
  compiled = fwd.lower(params, x).compile()
  compile_s = time.perf_counter() - t0
  return median_time(compiled, params, x), peak_mb(compiled), compile_s


def attention_layers(dim=64, heads=2):
  """One attention layer of each kind as a function of a (1, s, s, dim) map."""
  from vitjax.models.layers import attention as attn_lib  # pylint: disable=g-import-not-at-top
  from vitjax.models.layers import window_attention as win_lib  # pylint: disable=g-import-not-at-top
  layers = {}

  def global_attn(x):
    b, h, w, c = x.shape
    t = x.reshape(b, h * w, heads, c // heads)
    return attn_lib.dot_product_attention(t, t, t).reshape(b, h, w, c)
  layers["global"] = global_attn

  def window_attn(x):
    b, h, w, c = x.shape
    wins = win_lib.window_partition(x, 7)  # (b * windows, 49, c)
    t = wins.reshape(wins.shape[0], 49, heads, c // heads)
    o = attn_lib.dot_product_attention(t, t, t).reshape(wins.shape)
    return win_lib.window_reverse(o, 7, h, w)
  layers["window 7x7"] = window_attn

  try:
    from vitjax.models.layers import neighborhood_attention as na_lib  # pylint: disable=g-import-not-at-top
  except ImportError:
    na_lib = None
  if na_lib is not None:
    def na(dilation):
      def f(x):
        b, h, w, c = x.shape
        t = x.reshape(b, h, w, heads, c // heads)
        return na_lib.neighborhood_attention(t, t, t, kernel_size=7,
                                             dilation=dilation).reshape(x.shape)
      return f
    layers["neighborhood k7"] = na(1)
    layers["dilated neighborhood k7 d4"] = na(4)

  def sra(x, ratio=8):
    b, h, w, c = x.shape
    q = x.reshape(b, h * w, heads, c // heads)
    kv = x.reshape(b, h // ratio, ratio, w // ratio, ratio, c).mean((2, 4))
    kv = kv.reshape(b, -1, heads, c // heads)
    return attn_lib.dot_product_attention(q, kv, kv).reshape(x.shape)
  layers["spatial reduction R=8"] = sra

  def pooled(x, pool=7):
    b, h, w, c = x.shape
    q = x.reshape(b, h * w, heads, c // heads)
    kv = jax.image.resize(x, (b, pool, pool, c), "linear").reshape(b, -1, heads, c // heads)
    return attn_lib.dot_product_attention(q, kv, kv).reshape(x.shape)
  layers["linear SRA (7x7 pool)"] = pooled
  return layers


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--resolutions", default="224,448,672,896,1024")
  ap.add_argument("--maps", default="56,112,168,224", help="attention-layer map sides")
  ap.add_argument("--batch", type=int, default=1)
  ap.add_argument("--models", default=",".join(m for m, _, _ in MODELS))
  ap.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
  args = ap.parse_args(argv)
  resolutions = [int(r) for r in args.resolutions.split(",")]
  known = set(list_models())
  rows = []
  for name, kind, stride in MODELS:
    if name not in args.models.split(","):
      continue
    if name not in known:
      print(f"# {name}: not registered, skipped", flush=True)
      continue
    for r in resolutions:
      try:
        t, mem, comp = measure_model(name, r, args.batch)
      except UserError as e:  # e.g. Swin's window 7 does not tile a 1024 input
        print(f"# {name} @ {r}: skipped ({str(e).splitlines()[0][:100]})", flush=True)
        continue
      rows.append(dict(kind="model", name=name, attention=kind, resolution=r,
                       tokens=(r // stride) ** 2, time_s=t, peak_mb=mem, compile_s=comp))
      print(json.dumps(rows[-1]), flush=True)

  layer_rows = []
  for kind, fn in attention_layers().items():
    f = jax.jit(fn)
    for s in [int(v) for v in args.maps.split(",")]:
      if kind == "global" and s > 112:
        continue  # (s^2)^2 scores: 10 GB at 168x168
      x = jax.random.normal(jax.random.PRNGKey(0), (1, s, s, 64))
      compiled = f.lower(x).compile()
      layer_rows.append(dict(kind="layer", attention=kind, map=s, tokens=s * s,
                             time_s=median_time(compiled, x), peak_mb=peak_mb(compiled)))
      print(json.dumps(layer_rows[-1]), flush=True)

  report = render(rows, layer_rows, args)
  print(report)
  with open(os.path.join(args.out, "scaling.md"), "w") as f:
    f.write(report)
  plot(rows, layer_rows, os.path.join(args.out, "scaling.png"))


def _ratio(rows, key):
  """Cost per token relative to the smallest size of the same series."""
  base = rows[0]
  return [(r["time_s"] / base["time_s"]) / (r["tokens"] / base["tokens"]) for r in rows]


def render(rows, layer_rows, args):
  lines = [f"# Scaling with input resolution ({jax.devices()[0].device_kind}, "
           f"{os.cpu_count()} cores, batch {args.batch}, fp32)", "",
           "Whole models: median forward time, planned peak memory, and the cost per "
           "first-stage token relative to 224x224 (1.00 = linear).", "",
           "| model | attention | resolution | tokens | forward ms | peak MB | per-token ratio |",
           "|---|---|---|---|---|---|---|"]
  for name in dict.fromkeys(r["name"] for r in rows):
    series = [r for r in rows if r["name"] == name]
    for r, q in zip(series, _ratio(series, "time_s")):
      lines.append(f"| {name} | {r['attention']} | {r['resolution']} | {r['tokens']} | "
                   f"{r['time_s'] * 1e3:.1f} | {r['peak_mb']:.0f} | {q:.2f} |")
  lines += ["", "One attention layer alone (64 channels, 2 heads) on an s x s map "
            "(56 = Swin/NAT's first stage at 224, 224 = at 896):", "",
            "| attention | map | tokens | ms | peak MB | per-token ratio |",
            "|---|---|---|---|---|---|"]
  for kind in dict.fromkeys(r["attention"] for r in layer_rows):
    series = [r for r in layer_rows if r["attention"] == kind]
    for r, q in zip(series, _ratio(series, "time_s")):
      lines.append(f"| {kind} | {r['map']} | {r['tokens']} | {r['time_s'] * 1e3:.2f} | "
                   f"{r['peak_mb']:.1f} | {q:.2f} |")
  return "\n".join(lines) + "\n"


def plot(rows, layer_rows, path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 3, figsize=(17, 5))
  for name in dict.fromkeys(r["name"] for r in rows):
    s = [r for r in rows if r["name"] == name]
    axes[0].loglog([r["tokens"] for r in s], [r["time_s"] * 1e3 for r in s], "o-",
                   label=s[0]["attention"])
    axes[1].loglog([r["tokens"] for r in s], [r["peak_mb"] for r in s], "o-",
                   label=s[0]["attention"])
  for kind in dict.fromkeys(r["attention"] for r in layer_rows):
    s = [r for r in layer_rows if r["attention"] == kind]
    axes[2].loglog([r["tokens"] for r in s], [r["time_s"] * 1e3 for r in s], "o-", label=kind)
  for ax, title, ylabel in zip(
      axes, ("model forward time", "model peak memory (planned)", "one attention layer"),
      ("ms", "MB", "ms")):
    ax.set_xlabel("first-stage tokens")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


if __name__ == "__main__":
  main()
