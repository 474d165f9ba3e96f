"""vitjax against the same architecture in PyTorch (HF transformers), one process.

  python -m experiments.benchmark --model vit_small_patch16_224 --batch 8 \
      --resolution 224 [--train] [--compare] [--threads 2] [--dtype bfloat16] \
      [--attention auto] [--runs 7] [--json results.jsonl]

Measures, on the same machine and thread count:
  vitjax            jit-compiled forward (inference) and train step;
  pytorch-eager     HF `ViTForImageClassification` / `SwinForImageClassification`
                    built from a config matching the vitjax model (random weights;
                    eval + no_grad for inference);
  pytorch-compile   the same model under `torch.compile` (where it compiles).
`--compare` adds the two PyTorch rows; `--train` adds one full training step
(forward, softmax cross-entropy, backward, AdamW update; params and optimizer
state donated in JAX) to the inference row.

Every figure is the median of >= `--runs` timed runs after warm-up: images/s,
compile time (first call / `lower().compile()`), peak memory and MFU. FLOPs
come from XLA's cost analysis of the vitjax program (the forward; for training
the whole train step, forward + backward + AdamW, counted, not 3x forward),
with attention as plain XLA dots (a fused cuDNN kernel is opaque to the cost
analysis), and are used for the PyTorch rows too (same architecture). MFU = achieved FLOP/s / the peak measured in the same run:
a large `jnp.dot` (fp32; bf16 on a GPU). Peak memory: on CPU, vitjax = the
compiled program's argument bytes + resident-memory growth sampled during the
timed runs (XLA:CPU's YNNPACK fusions allocate intermediates the XLA plan does
not count; the plan is kept as `xla_plan_mb`), PyTorch = parameter bytes +
resident-memory growth sampled during the runs (under `--allocator tcmalloc`:
growth of tcmalloc's allocated bytes instead of RSS, for both); on a GPU, vitjax = the XLA
plan (arguments + outputs + temporaries) and PyTorch =
`torch.cuda.max_memory_allocated`.

Prints one JSON line per measurement (keys `impl`, `mode`, `images_per_s`,
`mfu`, `peak_memory_mb`, ...) as it goes, then a table.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model", default="vit_small_patch16_224")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--resolution", type=int, default=224)
  p.add_argument("--train", action="store_true", help="also time one training step")
  p.add_argument("--no-inference", action="store_true", help="time only the train step")
  p.add_argument("--compare", action="store_true", help="also PyTorch eager and compiled")
  p.add_argument("--impls", default="", help="comma list overriding --compare: "
                 "vitjax,pytorch-eager,pytorch-compile")
  p.add_argument("--threads", type=int, default=0,
                 help="CPU threads for both frameworks (0: all cores)")
  p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                 help="compute dtype; auto: float32 on CPU, bfloat16 on a GPU")
  p.add_argument("--attention", default="auto",
                 help="vitjax attention impl (layers/attention.py IMPLS)")
  p.add_argument("--num-classes", type=int, default=1000)
  p.add_argument("--model-kw", default="{}", help="JSON overrides for create_model "
                 "(also mapped onto the HF config where they matter)")
  p.add_argument("--allocator", choices=("system", "tcmalloc"), default="system",
                 help="'tcmalloc': re-run this command with tcmalloc preloaded (both "
                 "frameworks; vitjax/allocator.py says why it matters on CPU)")
  p.add_argument("--runs", type=int, default=7)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--peak-size", type=int, default=0, help="matmul side for the peak "
                 "(0: 2048 on CPU, 8192 on a GPU)")
  p.add_argument("--json", default="", help="also append the JSON lines to this file")
  p.add_argument("--pipeline", default="", metavar="CONFIG",
                 help="only time the training input pipeline of this config file")
  p.add_argument("--summarize", default="", metavar="WORKDIR",
                 help="only report compile time / steady-state steps/s / accuracy "
                 "of a finished `python -m vitjax.main` run")
  return p.parse_args(argv)


def limit_threads(n):
  """Both frameworks on `n` cores: CPU affinity + XLA / torch thread counts.
  Must run before jax is imported."""
  if not n:
    return
  try:
    cores = sorted(os.sched_getaffinity(0))[:n]
    os.sched_setaffinity(0, cores)
  except (AttributeError, OSError):
    pass
  flags = os.environ.get("XLA_FLAGS", "")
  os.environ["XLA_FLAGS"] = (flags + f" --xla_cpu_multi_thread_eigen=true "
                             f"intra_op_parallelism_threads={n}").strip()
  for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(n)


def _tcmalloc_allocated_bytes():
  """A function returning the bytes tcmalloc has handed out and not got back,
  or None when tcmalloc is not loaded."""
  import ctypes  # pylint: disable=g-import-not-at-top
  try:
    get = ctypes.CDLL(None).MallocExtension_GetNumericProperty
  except (OSError, AttributeError):
    return None
  get.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_size_t)]
  get.restype = ctypes.c_int
  value = ctypes.c_size_t()

  def read():
    get(b"generic.current_allocated_bytes", ctypes.byref(value))
    return value.value
  return read


class RssSampler:
  """Peak memory of this process, sampled every 2 ms in a thread: resident
  memory, or with tcmalloc the bytes allocated (tcmalloc keeps freed memory
  resident, so RSS would not grow while a run reuses it)."""

  def __init__(self):
    self._page = os.sysconf("SC_PAGE_SIZE")
    self._tcmalloc = _tcmalloc_allocated_bytes()
    self.peak = self.base = self.rss()
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True)

  def rss(self):
    if self._tcmalloc is not None:
      return self._tcmalloc()
    with open("/proc/self/statm") as f:
      return int(f.read().split()[1]) * self._page

  def _run(self):
    while not self._stop.is_set():
      self.peak = max(self.peak, self.rss())
      time.sleep(0.002)

  def __enter__(self):
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()
    self.peak = max(self.peak, self.rss())

  @property
  def growth_mb(self):
    return (self.peak - self.base) / 2 ** 20


def timed_runs(step, runs, warmup, sync):
  """Median seconds of `runs` calls of `step()` after `warmup` calls."""
  for _ in range(warmup):
    sync(step())
  times, cpu = [], []
  for _ in range(runs):
    t0, c0 = time.perf_counter(), time.process_time()
    sync(step())
    times.append(time.perf_counter() - t0)
    cpu.append(time.process_time() - c0)
  timed_runs.cpu_s = statistics.median(cpu)   # CPU seconds of this process per run
  return statistics.median(times), times


# --------------------------------------------------------------------- JAX side


def measure_peak(jax, jnp, size, dtype, runs=5):
  """FLOP/s of a [size, size] @ [size, size] jnp.dot (median of `runs`)."""
  a = jax.random.normal(jax.random.PRNGKey(0), (size, size), dtype)
  b = jax.random.normal(jax.random.PRNGKey(1), (size, size), dtype)
  reps = 1 if jax.default_backend() == "cpu" else 20
  f = jax.jit(jnp.dot)
  sync = jax.block_until_ready
  def step():
    out = None
    for _ in range(reps):
      out = f(a, b)
    return out
  med, _ = timed_runs(step, runs, 2, sync)
  return 2.0 * size ** 3 * reps / med


def measured_mb(compiled, rss, gpu):
  """Peak memory of a vitjax row. GPU: XLA's plan (arguments + outputs +
  temporaries). CPU: argument bytes + the memory growth `rss` sampled during the
  timed runs, as the PyTorch rows: XLA:CPU's YNNPACK fusions allocate their own
  intermediates (e.g. a fused attention's logits), which the plan does not see."""
  if gpu:
    return planned_mb(compiled)
  m = compiled.memory_analysis()
  args_mb = m.argument_size_in_bytes / 2 ** 20 if m is not None else 0.0
  return args_mb + rss.growth_mb


def planned_mb(compiled):
  m = compiled.memory_analysis()
  if m is None:
    return float("nan")
  total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
  return (total - getattr(m, "alias_size_in_bytes", 0)) / 2 ** 20


def build_vitjax(args, dtype, attention=None):
  from vitjax.models import create_model  # pylint: disable=g-import-not-at-top
  kw = dict(num_classes=args.num_classes, dtype=dtype)
  kw.update(json.loads(args.model_kw))
  if "drop_path_rate" not in kw:
    kw["drop_path_rate"] = 0.0   # as the HF configs below: no stochastic depth
  if args.model.startswith(("vit_", "deit_")):
    kw["attention_impl"] = attention or args.attention
  return create_model(args.model, **kw)


def optimizer():
  import optax  # pylint: disable=g-import-not-at-top
  return optax.adamw(1e-3, weight_decay=0.05)


def make_forward(model):
  """(params, images) -> logits: the timed inference program."""
  return lambda p, x: model.apply({"params": p}, x)[0]


def make_train_step(model, tx):
  """The timed training step: forward, cross-entropy, backward, `tx` update."""
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top

  def step(params, opt_state, x, y, rng):
    def loss_fn(p):
      logits = model.apply({"params": p}, x, train=True, rngs={"dropout": rng})[0]
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss
  return step


def bench_vitjax(args, dtype_name, modes, peak):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  dtype = jnp.bfloat16 if dtype_name == "bfloat16" else jnp.float32
  model = build_vitjax(args, dtype)
  # FLOPs are counted on the XLA formulation of attention: a fused kernel (cuDNN)
  # is a custom call that XLA's cost analysis does not see into.
  flops_model = build_vitjax(args, dtype, attention="xla")
  res, b = args.resolution, args.batch
  gpu = jax.default_backend() == "gpu"
  x = jax.random.normal(jax.random.PRNGKey(0), (b, res, res, 3), jnp.float32)
  y = jax.random.randint(jax.random.PRNGKey(1), (b,), 0, args.num_classes)
  params = jax.jit(model.init)(jax.random.PRNGKey(2), x[:1])["params"]
  rows = []
  tx = optimizer()
  train_step = lambda model: make_train_step(model, tx)

  def count_flops(fn, *a):
    """FLOPs of `fn(*a)`: XLA's cost analysis of the program before
    optimisation, lowered for the CPU whatever runs it (a GPU's compiled
    program hides its matmuls in cuBLAS / cuDNN custom calls)."""
    cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    shapes = jax.tree_util.tree_map(
        lambda t: jax.ShapeDtypeStruct(t.shape, t.dtype, sharding=cpu), a)
    cost = jax.jit(fn).lower(*shapes).cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", float("nan"))) if cost else float("nan")

  def kernel(compiled):
    text = compiled.as_text()
    return "cudnn-fmha" if ("fmha" in text or "cudnn$f" in text) else "xla"

  if "inference" in modes:
    fwd = jax.jit(make_forward(model))
    t0 = time.perf_counter()
    compiled = fwd.lower(params, x).compile()
    compile_s = time.perf_counter() - t0
    flops = count_flops(make_forward(flops_model), params, x)
    with RssSampler() as rss:
      med, times = timed_runs(lambda: compiled(params, x), args.runs, args.warmup,
                              jax.block_until_ready)
    rows.append(result("vitjax", "inference", args, med, times, compile_s, flops,
                       measured_mb(compiled, rss, gpu), peak, dtype_name,
                       flops_source=FLOPS_SOURCE, attention_kernel=kernel(compiled),
                       xla_plan_mb=planned_mb(compiled)))

  if "train" in modes:
    opt_state = jax.jit(tx.init)(params)
    rng = jax.random.PRNGKey(3)
    step = jax.jit(train_step(model), donate_argnums=(0, 1))
    t0 = time.perf_counter()
    compiled = step.lower(params, opt_state, x, y, rng).compile()
    compile_s = time.perf_counter() - t0
    flops = count_flops(train_step(flops_model), params, opt_state, x, y, rng)
    state = {"p": params, "o": opt_state}
    del params, opt_state

    def run():
      state["p"], state["o"], loss = compiled(state["p"], state["o"], x, y, rng)
      return loss
    with RssSampler() as rss:
      med, times = timed_runs(run, args.runs, args.warmup, jax.block_until_ready)
    rows.append(result("vitjax", "train", args, med, times, compile_s, flops,
                       measured_mb(compiled, rss, gpu), peak, dtype_name,
                       flops_source=FLOPS_SOURCE, attention_kernel=kernel(compiled),
                       xla_plan_mb=planned_mb(compiled)))
  return rows


FLOPS_SOURCE = ("XLA cost analysis of the vitjax program before optimisation, lowered for "
                "the CPU, attention as XLA dots")


# ----------------------------------------------------------------- PyTorch side


def hf_model(args, vj_model, transformers):
  """The HF model of the same architecture as `vj_model`, random weights."""
  kw = json.loads(args.model_kw)
  if args.model.startswith(("vit_", "deit_")):
    cfg = transformers.ViTConfig(
        hidden_size=vj_model.hidden_size, num_hidden_layers=vj_model.depth,
        num_attention_heads=vj_model.num_heads, intermediate_size=vj_model.mlp_dim,
        image_size=args.resolution, patch_size=vj_model.patch_size,
        num_labels=args.num_classes, layer_norm_eps=vj_model.layer_norm_eps,
        qkv_bias=vj_model.qkv_bias)
    return transformers.ViTForImageClassification(cfg)
  if args.model.startswith("swin_"):
    cfg = transformers.SwinConfig(
        image_size=args.resolution, patch_size=vj_model.patch_size,
        embed_dim=vj_model.embed_dim, depths=list(vj_model.depths),
        num_heads=list(vj_model.num_heads), window_size=vj_model.window_size,
        mlp_ratio=vj_model.mlp_ratio, num_labels=args.num_classes,
        drop_path_rate=kw.get("drop_path_rate", 0.0), layer_norm_eps=vj_model.layer_norm_eps)
    return transformers.SwinForImageClassification(cfg)
  raise SystemExit(f"no PyTorch counterpart wired for {args.model!r} (vit_*, deit_*, swin_*)")


def torch_peak(torch, size, dtype, device, runs=5):
  a = torch.randn(size, size, dtype=dtype, device=device)
  b = torch.randn(size, size, dtype=dtype, device=device)
  reps = 1 if device == "cpu" else 20
  sync = (lambda _: torch.cuda.synchronize()) if device != "cpu" else (lambda _: None)
  def step():
    for _ in range(reps):
      c = a @ b
    return c
  med, _ = timed_runs(step, runs, 2, sync)
  return 2.0 * size ** 3 * reps / med


def bench_torch(args, impl, dtype_name, modes, peak, vj_model, flops):
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  device = "cuda" if torch.cuda.is_available() else "cpu"
  torch.manual_seed(0)
  model = hf_model(args, vj_model, transformers).to(device)
  n_params = sum(p.numel() for p in model.parameters())
  bf16 = dtype_name == "bfloat16"
  autocast = (lambda: torch.autocast(device, dtype=torch.bfloat16)) if bf16 else (
      lambda: torch.autocast(device, enabled=False))
  b, res = args.batch, args.resolution
  x = torch.randn(b, 3, res, res, device=device)
  y = torch.randint(0, args.num_classes, (b,), device=device)
  gpu = device == "cuda"
  def sync(_):
    if gpu:
      torch.cuda.synchronize()
  net = torch.compile(model) if impl == "pytorch-compile" else model
  attn = getattr(model.config, "_attn_implementation", None)
  rows = []

  def measure(mode, step):
    if gpu:
      torch.cuda.synchronize()
      torch.cuda.reset_peak_memory_stats()
    param_mb = n_params * 4 / 2 ** 20
    with RssSampler() as rss:
      t0 = time.perf_counter()
      sync(step())
      compile_s = time.perf_counter() - t0
      med, times = timed_runs(step, args.runs, max(args.warmup - 1, 0), sync)
    mem = torch.cuda.max_memory_allocated() / 2 ** 20 if gpu else param_mb + rss.growth_mb
    f = flops[mode]
    rows.append(result(impl, mode, args, med, times, compile_s, f, mem, peak, dtype_name,
                       flops_source=FLOPS_SOURCE + ", same architecture", attn_implementation=attn))

  try:
    if "inference" in modes:
      model.eval()
      def infer():
        with torch.no_grad(), autocast():
          return net(pixel_values=x).logits
      measure("inference", infer)
    if "train" in modes:
      model.train()
      opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
      loss_fn = torch.nn.CrossEntropyLoss()
      def train():
        opt.zero_grad(set_to_none=True)
        with autocast():
          loss = loss_fn(net(pixel_values=x).logits.float(), y)
        loss.backward()
        opt.step()
        return loss
      measure("train", train)
  except Exception as e:  # pylint: disable=broad-except
    if impl != "pytorch-compile":
      raise
    print(f"# {impl} failed: {type(e).__name__}: {str(e)[:300]}", file=sys.stderr)
    rows.append(dict(impl=impl, mode="failed", error=f"{type(e).__name__}: {str(e)[:300]}",
                     images_per_s=None, mfu=None, peak_memory_mb=None, model=args.model))
  return rows


# ---------------------------------------------------------------------- output


def result(impl, mode, args, med, times, compile_s, flops, mem, peak, dtype_name, **extra):
  return dict(
      impl=impl, mode=mode, model=args.model, batch=args.batch,
      resolution=args.resolution, dtype=dtype_name,
      images_per_s=args.batch / med, step_ms=1e3 * med,
      step_ms_runs=[round(1e3 * t, 2) for t in times],
      compile_s=compile_s, gflops_per_step=flops / 1e9,
      achieved_tflops=flops / med / 1e12, mfu=flops / med / peak,
      peak_memory_mb=mem, cpu_ms=1e3 * getattr(timed_runs, "cpu_s", float("nan")), **extra)


def table(rows):
  head = ["impl", "mode", "images/s", "step ms", "CPU ms", "compile s", "GFLOP/step",
          "TFLOP/s", "MFU", "peak MB"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    if r["mode"] == "failed":
      lines.append(f"| {r['impl']} | failed: {r['error'][:60]} |")
      continue
    lines.append("| " + " | ".join([
        r["impl"], r["mode"], f"{r['images_per_s']:.1f}", f"{r['step_ms']:.1f}",
        f"{r['cpu_ms']:.0f}",
        f"{r['compile_s']:.1f}", f"{r['gflops_per_step']:.1f}",
        f"{r['achieved_tflops']:.3f}", f"{100 * r['mfu']:.1f}%",
        f"{r['peak_memory_mb']:.0f}"]) + " |")
  return "\n".join(lines)


def bench_pipeline(config_path, batches=50):
  """Images/s of the training input pipeline alone (no model) for a config."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  from vitjax import data as data_lib  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location("bench_config", config_path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  config = mod.get_config()
  it = data_lib.train_iterator(config)
  next(it)   # builds the pipeline
  t0 = time.perf_counter()
  for _ in range(batches):
    next(it)
  dt = time.perf_counter() - t0
  row = dict(impl="vitjax-input-pipeline", mode="pipeline", config=config_path,
             batch=config.batch_size, images_per_s=batches * config.batch_size / dt,
             steps_per_s=batches / dt, mfu=None, peak_memory_mb=None,
             load=os.getloadavg()[0])
  print(json.dumps(row))
  print(f"# input pipeline of {config_path}: {row['images_per_s']:.0f} images/s "
        f"({row['steps_per_s']:.1f} batches/s of {config.batch_size})")
  return row


def summarize_run(workdir):
  """Compile time, steady-state steps/s, wall time and accuracy of a finished
  `vitjax.main` run, read from its metrics.jsonl."""
  recs = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  cfg = json.load(open(os.path.join(workdir, "config.json")))
  bs = cfg["batch_size"]
  compile_s = next(r["train/compile_time_s"] for r in recs if "train/compile_time_s" in r)
  ips = [r["train/images_per_s"] for r in recs if "train/images_per_s" in r]
  steady = statistics.median(ips[1:] or ips)    # the first window holds the compile
  acc = [r for r in recs if "eval/accuracy" in r]
  row = dict(impl="vitjax-trainer", mode="train-run", workdir=workdir,
             compile_s=compile_s, images_per_s=steady, steps_per_s=steady / bs,
             final_step=acc[-1]["step"] if acc else None,
             eval_accuracy=acc[-1]["eval/accuracy"] if acc else None,
             mfu=None, peak_memory_mb=None)
  print(json.dumps(row))
  print(f"# {workdir}: compile {compile_s:.1f} s, steady state {row['steps_per_s']:.1f} "
        f"steps/s ({steady:.0f} images/s), final accuracy {row['eval_accuracy']}")
  return row


def main(argv=None):
  from vitjax import allocator  # pylint: disable=g-import-not-at-top
  args = parse_args(argv)
  if args.allocator == "tcmalloc":
    allocator.reexec_with_tcmalloc(
        ["-m", "experiments.benchmark"] + list(sys.argv[1:] if argv is None else argv))
  if args.pipeline or args.summarize:
    limit_threads(args.threads)
    return [bench_pipeline(args.pipeline)] if args.pipeline else [summarize_run(args.summarize)]
  limit_threads(args.threads)
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  on_gpu = jax.default_backend() == "gpu"
  dtype_name = args.dtype if args.dtype != "auto" else ("bfloat16" if on_gpu else "float32")
  peak_dtype = jnp.bfloat16 if on_gpu else jnp.float32
  size = args.peak_size or (8192 if on_gpu else 2048)
  impls = [s for s in args.impls.split(",") if s] or (
      ["vitjax", "pytorch-eager", "pytorch-compile"] if args.compare else ["vitjax"])
  modes = ([] if args.no_inference else ["inference"]) + (
      ["train"] if args.train or args.no_inference else [])

  peak = measure_peak(jax, jnp, size, peak_dtype)
  device = jax.devices()[0].device_kind
  threads = args.threads or len(os.sched_getaffinity(0))
  meta = dict(device=device, backend=jax.default_backend(), threads=threads,
              peak_tflops=peak / 1e12, peak_dtype=jnp.dtype(peak_dtype).name,
              peak_matmul=size, jax=jax.__version__, host=platform.node(),
              load=os.getloadavg()[0], attention=args.attention,
              allocator=allocator.current())
  print(f"# {args.model} batch {args.batch} {args.resolution}px {dtype_name} on {device} "
        f"({threads} threads, {meta['allocator']} malloc); measured {meta['peak_dtype']} matmul peak "
        f"{peak / 1e12:.3f} TFLOP/s ({size}^3 jnp.dot); load {meta['load']:.2f}",
        flush=True)

  rows = []
  def emit(new):
    for r in new:
      r.update(meta)
      line = json.dumps(r)
      print(line, flush=True)
      if args.json:
        with open(args.json, "a") as f:
          f.write(line + "\n")
    rows.extend(new)

  flops = {}
  vj_model = build_vitjax(args, jnp.float32)
  if "vitjax" in impls:
    vj_rows = bench_vitjax(args, dtype_name, modes, peak)
    emit(vj_rows)
    flops = {r["mode"]: r["gflops_per_step"] * 1e9 for r in vj_rows}
  torch_impls = [i for i in impls if i.startswith("pytorch")]
  if torch_impls:
    import torch  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(threads)
    if not flops:
      raise SystemExit("the PyTorch rows take their FLOPs from vitjax: keep vitjax in --impls")
    meta["torch"] = torch.__version__
    meta["torch_peak_tflops"] = torch_peak(
        torch, size, torch.bfloat16 if on_gpu else torch.float32,
        "cuda" if torch.cuda.is_available() else "cpu") / 1e12
    for impl in torch_impls:
      emit(bench_torch(args, impl, dtype_name, modes, peak, vj_model, flops))
  print(table(rows))
  return rows


if __name__ == "__main__":
  main()
