"""Per-op profile of a vitjax program: where the step time goes.

    python -m experiments.profile_cpu --model vit_small_patch16_224 --batch 8 --train

Compiles the same programs as `experiments/benchmark.py` (inference, or the
full train step: forward, backward, AdamW), runs them under `jax.profiler`
with XLA's per-thunk trace events on (`--xla_cpu_enable_xprof_traceme`), and
adds up the time of every executed HLO instruction. Two tables:

  by kind   instructions grouped by name without the numeric suffix
            (`ynn_fusion` = a YNNPACK fusion: a dot with the elementwise ops
            XLA fused around it, or a fused reduction such as a layer norm;
            `dot` = a dot left to Eigen; `*_fusion` = XLA loop fusions named
            after their ops; `copy` / `transpose` = layout changes);
  by layer  the same time grouped by the JAX op that produced each
            instruction (its `op_name` metadata with block indices removed,
            e.g. `block/attn/qkv/dot_general`), so one line covers that
            layer in every block.

Also prints the step time without the profiler, and the sum of the op times
(on a 2-core machine XLA runs one op at a time over both cores, so the sum is
close to the step time). `--json` writes both tables.
"""

import argparse
import collections
import glob
import json
import os
import re
import sys
import tempfile
import time

from experiments import benchmark


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--model", required=True)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--resolution", type=int, default=224)
  p.add_argument("--num-classes", type=int, default=1000)
  p.add_argument("--model-kw", default="{}")
  p.add_argument("--attention", default="auto")
  p.add_argument("--train", action="store_true", help="profile the train step "
                 "(default: inference)")
  p.add_argument("--threads", type=int, default=2)
  p.add_argument("--runs", type=int, default=3)
  p.add_argument("--top", type=int, default=20)
  p.add_argument("--json", default="")
  return p.parse_args(argv)


def _instructions(hlo_text):
  """{instruction name: JAX op_name metadata ('' if none)} of a compiled HLO module."""
  out = {}
  for m in re.finditer(r"^\s*(?:ROOT )?%?([\w.\-]+) = ([^\n]*)", hlo_text, re.M):
    op = re.search(r'op_name="([^"]*)"', m.group(2))
    out.setdefault(m.group(1), op.group(1) if op else "")
  return out


def _layer(op_name):
  """'jit(step)/transpose(jvp(VisionTransformer))/block_3/attn/qkv/dot_general'
  -> 'backward: block/attn/qkv/dot_general'."""
  backward = "transpose(" in op_name
  if not op_name:
    return "(no JAX op: constants, broadcasts XLA added)"
  parts = [p for p in op_name.split("/")[1:] if not p.startswith(("jvp(", "transpose("))]
  path = "/".join(re.sub(r"(_\d+)+$", "", p) for p in parts)
  return ("backward: " if backward else "") + path


def aggregate(events, names, runs):
  """events: [(name, duration_ns)] of XLA ops, each name a key of `names` ->
  (by kind, by layer) ms per step, instructions per step by kind."""
  kind, layer = collections.Counter(), collections.Counter()
  count = collections.Counter()
  for name, ns in events:
    k = re.sub(r"\.\d+$", "", name)
    kind[k] += ns / 1e6 / runs
    count[k] += 1
    layer[_layer(names[name])] += ns / 1e6 / runs
  return kind, layer, {k: v // runs for k, v in count.items()}


def main(argv=None):
  args = parse_args(argv)
  benchmark.limit_threads(args.threads)
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_cpu_enable_xprof_traceme=true").strip()
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jax.profiler import ProfileData  # pylint: disable=g-import-not-at-top

  bargs = benchmark.parse_args(["--model", args.model, "--batch", str(args.batch),
                                "--resolution", str(args.resolution), "--num-classes",
                                str(args.num_classes), "--model-kw", args.model_kw,
                                "--attention", args.attention])
  model = benchmark.build_vitjax(bargs, jnp.float32)
  r, b = args.resolution, args.batch
  x = jax.random.normal(jax.random.PRNGKey(0), (b, r, r, 3), jnp.float32)
  y = jax.random.randint(jax.random.PRNGKey(1), (b,), 0, args.num_classes)
  params = jax.jit(model.init)(jax.random.PRNGKey(2), x[:1])["params"]
  if args.train:
    tx = benchmark.optimizer()
    step = benchmark.make_train_step(model, tx)
    state = [params, jax.jit(tx.init)(params)]
    rng = jax.random.PRNGKey(3)
    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(*state, x, y, rng).compile()

    def run():
      state[0], state[1], loss = compiled(state[0], state[1], x, y, rng)
      return loss
  else:
    compiled = jax.jit(benchmark.make_forward(model)).lower(params, x).compile()
    run = lambda: compiled(params, x)
  names = _instructions(compiled.as_text())

  for _ in range(2):
    jax.block_until_ready(run())
  t0 = time.perf_counter()
  for _ in range(args.runs):
    jax.block_until_ready(run())
  step_ms = (time.perf_counter() - t0) / args.runs * 1e3

  with tempfile.TemporaryDirectory() as d:
    with jax.profiler.trace(d):
      for _ in range(args.runs):
        jax.block_until_ready(run())
    files = glob.glob(os.path.join(d, "**", "*.xplane.pb"), recursive=True)
    if not files:
      sys.exit("jax.profiler wrote no trace: is the profiler plugin available?")
    profile = ProfileData.from_file(files[0])
    events = [(ev.name, ev.duration_ns) for plane in profile.planes
              for line in plane.lines if line.name != "python"
              for ev in line.events
              if not ev.name.startswith(("ThunkExecutor", "end: ", "SlinkyThreadPool"))]
  events = [(n, ns) for n, ns in events if n in names]
  kind, layer, count = aggregate(events, names, args.runs)
  total = sum(kind.values())

  mode = "train step" if args.train else "inference"
  print(f"# {args.model}, batch {b}, {r}x{r}, {mode}, {args.threads} threads: "
        f"{step_ms:.1f} ms per step without the profiler; XLA ops add up to "
        f"{total:.1f} ms per step under it")
  print("\n| kind | ms / step | share | instructions / step |\n|---|---|---|---|")
  for k, v in kind.most_common(args.top):
    print(f"| {k} | {v:.1f} | {100 * v / total:.1f}% | {count[k]} |")
  print("\n| layer (all blocks) | ms / step | share |\n|---|---|---|")
  for k, v in layer.most_common(args.top):
    print(f"| {k} | {v:.1f} | {100 * v / total:.1f}% |")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(dict(model=args.model, batch=b, resolution=r, mode=mode, step_ms=step_ms,
                     op_total_ms=total, by_kind=dict(kind), by_layer=dict(layer)), f, indent=1)
  return dict(step_ms=step_ms, total=total, kind=kind, layer=layer)


if __name__ == "__main__":
  main()
