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
linear, a quadratic cost grows as N(r) / N(224). On a CPU this ratio also
holds a cache effect: at 224 a batch-1 forward's activations fit in the
caches, at 896 they do not, so even a linear-cost model pays more per token.
The "same-token ratio" separates the two: t(r, batch 1) over t(224, batch
(r/224)^2), the same number of tokens per call, so the memory traffic is
alike and only the attention's dependence on the sequence length is left
(1.0 = linear; global attention grows as N(r) / N(224)). All sizes of one
model are timed round-robin in one process (`interleaved_times`), so load on
the machine hits them alike. Writes scaling.png and scaling.md (the tables)
into --out and prints them.
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
  return interleaved_times([(fn, args)], runs=runs, min_time=min_time)[0]


def interleaved_times(calls, runs=5, min_time=1.0):
  """Median wall time of each `fn(*args)` in `calls`, timed round-robin.

  One warm-up each, then rounds that run every call once, so that a change in
  the machine's load during the measurement hits every call alike (the
  ratios between them are what the tables report).
  """
  for fn, args in calls:
    jax.block_until_ready(fn(*args))
  times = [[] for _ in calls]
  start = time.perf_counter()
  while len(times[0]) < runs or (time.perf_counter() - start < min_time and len(times[0]) < 50):
    for i, (fn, args) in enumerate(calls):
      t0 = time.perf_counter()
      jax.block_until_ready(fn(*args))
      times[i].append(time.perf_counter() - t0)
  return [statistics.median(t) for t in times]


def peak_mb(compiled):
  m = compiled.memory_analysis()
  if m is None:
    return float("nan")
  total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
  return (total - getattr(m, "alias_size_in_bytes", 0)) / 2 ** 20


def compile_model(name, resolution, batch):
  """(compiled forward, its arguments, compile seconds) of `name` at this size."""
  model = create_model(name, num_classes=1000)
  x = jnp.zeros((batch, resolution, resolution, 3), jnp.float32)
  # Random weights for this resolution (a learned position embedding has its size).
  params = jax.jit(model.init)(jax.random.PRNGKey(0), x[:1])
  fwd = jax.jit(lambda v, x: model.apply(v, x)[0])
  t0 = time.perf_counter()
  compiled = fwd.lower(params, x).compile()
  return compiled, (params, x), time.perf_counter() - t0


def measure_model(name, resolution, batch):
  compiled, args, compile_s = compile_model(name, resolution, batch)
  return median_time(compiled, *args), peak_mb(compiled), compile_s


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
    compiled = {}  # (resolution, batch) -> (compiled, args, compile_s)
    for r in resolutions:
      try:
        compiled[r, args.batch] = compile_model(name, r, args.batch)
      except UserError as e:  # e.g. Swin's window 7 does not tile a 1024 input
        print(f"# {name} @ {r}: skipped ({str(e).splitlines()[0][:100]})", flush=True)
    base = min(r for r, _ in compiled) if compiled else None
    for r, _ in list(compiled):
      k = (r // base) ** 2 * args.batch
      if r != base and r % base == 0 and k <= 16 * args.batch:
        # Equal-token reference: the base resolution at k times the batch.
        compiled[base, k] = compile_model(name, base, k)
    keys = list(compiled)
    times = dict(zip(keys, interleaved_times([(compiled[k][0], compiled[k][1]) for k in keys])))
    for r in sorted({r for r, b in keys if b == args.batch}):
      c, _, comp = compiled[r, args.batch]
      k = (r // base) ** 2 * args.batch
      ref = times.get((base, k)) if r % base == 0 else None
      rows.append(dict(kind="model", name=name, attention=kind, resolution=r,
                       tokens=(r // stride) ** 2, time_s=times[r, args.batch],
                       peak_mb=peak_mb(c), compile_s=comp,
                       same_tokens_ratio=(times[r, args.batch] / ref) if ref else None))
      print(json.dumps(rows[-1]), flush=True)
    del compiled

  layer_rows = []
  maps = [int(v) for v in args.maps.split(",")]
  for kind, fn in attention_layers().items():
    f = jax.jit(fn)
    calls = {}
    for s in maps:
      if kind == "global" and s > 112:
        continue  # (s^2)^2 scores: 10 GB at 168x168
      calls[s, 1] = f.lower(jnp.zeros((1, s, s, 64))).compile()
      k = (s // maps[0]) ** 2
      if s != maps[0] and s % maps[0] == 0 and kind != "global":
        calls[maps[0], k] = f.lower(jnp.zeros((k, maps[0], maps[0], 64))).compile()
    inputs = {key: (jax.random.normal(jax.random.PRNGKey(0), (key[1], key[0], key[0], 64)),)
              for key in calls}
    keys = list(calls)
    times = dict(zip(keys, interleaved_times([(calls[k], inputs[k]) for k in keys])))
    for s in sorted({s for s, b in keys if b == 1}):
      ref = times.get((maps[0], (s // maps[0]) ** 2))
      layer_rows.append(dict(kind="layer", attention=kind, map=s, tokens=s * s,
                             time_s=times[s, 1], peak_mb=peak_mb(calls[s, 1]),
                             same_tokens_ratio=(times[s, 1] / ref) if ref and s % maps[0] == 0
                             and s != maps[0] else (1.0 if s == maps[0] else None)))
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


def _fmt(x):
  return "-" if x is None else f"{x:.2f}"


def render(rows, layer_rows, args):
  lines = [f"# Scaling with input resolution ({jax.devices()[0].device_kind}, "
           f"{os.cpu_count()} cores, batch {args.batch}, fp32)", "",
           "Whole models: median forward time, planned peak memory, and the cost per "
           "first-stage token relative to 224x224 (1.00 = linear); same-token ratio: "
           "t(r, batch 1) / t(224, batch (r/224)^2), equal tokens per call (see the "
           "module docstring).", "",
           "| model | attention | resolution | tokens | forward ms | peak MB | per-token ratio "
           "| same-token ratio |",
           "|---|---|---|---|---|---|---|---|"]
  for name in dict.fromkeys(r["name"] for r in rows):
    series = [r for r in rows if r["name"] == name]
    for r, q in zip(series, _ratio(series, "time_s")):
      lines.append(f"| {name} | {r['attention']} | {r['resolution']} | {r['tokens']} | "
                   f"{r['time_s'] * 1e3:.1f} | {r['peak_mb']:.0f} | {q:.2f} | "
                   f"{_fmt(r.get('same_tokens_ratio'))} |")
  lines += ["", "One attention layer alone (64 channels, 2 heads) on an s x s map "
            "(56 = Swin/NAT's first stage at 224, 224 = at 896):", "",
            "| attention | map | tokens | ms | peak MB | per-token ratio | same-token ratio |",
            "|---|---|---|---|---|---|---|"]
  for kind in dict.fromkeys(r["attention"] for r in layer_rows):
    series = [r for r in layer_rows if r["attention"] == kind]
    for r, q in zip(series, _ratio(series, "time_s")):
      lines.append(f"| {kind} | {r['map']} | {r['tokens']} | {r['time_s'] * 1e3:.2f} | "
                   f"{r['peak_mb']:.1f} | {q:.2f} | {_fmt(r.get('same_tokens_ratio'))} |")
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
