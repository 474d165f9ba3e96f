"""Compression on the digits: int8 PTQ, head pruning, ToMe, QAT, bf16, remat.

Runs come from experiments/compression_digits_train.sh (quickstart fp32 / bf16,
seeds 0-2, under ROOT; the full 120-epoch fp32 seed-0 run is ROOT/fp32_s0) and `python -m vitjax.main --config=configs/tome_digits.py
--workdir=ROOT/tome`. Each subcommand prints JSON and merges it into
experiments/compression_digits.json (the figures of compression_digits.md):

  python experiments/compression_digits.py int8  --root=/tmp/comp
  python experiments/compression_digits.py bf16  --root=/tmp/comp --tag=_e40
  python experiments/compression_digits.py bf16  --root=/tmp/comp --tag=_e120  # full length
  python experiments/compression_digits.py prune --root=/tmp/comp
  python experiments/compression_digits.py tome  --root=/tmp/comp
  python experiments/compression_digits.py qat   --root=/tmp/comp
  python experiments/compression_digits.py remat
"""

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "compression_digits.json")


def _save(key, value):
  data = {}
  if os.path.exists(OUT):
    with open(OUT) as f:
      data = json.load(f)
  data[key] = value
  with open(OUT, "w") as f:
    json.dump(data, f, indent=1)
  print(json.dumps({key: value}), flush=True)


def _final_accuracy(workdir):
  """The trainer's last eval accuracy (metrics.jsonl)."""
  acc = None
  if not os.path.exists(os.path.join(workdir, "metrics.jsonl")):
    return None
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      row = json.loads(line)
      if "eval/accuracy" in row:
        acc = row["eval/accuracy"]
  return acc


def _time_stats(log):
  """Wall and CPU seconds from a `/usr/bin/time -v` log."""
  text = open(log).read()
  user = float(re.search(r"User time \(seconds\): ([\d.]+)", text).group(1))
  sys_ = float(re.search(r"System time \(seconds\): ([\d.]+)", text).group(1))
  wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text).group(1)
  secs = 0.0
  for part in wall.split(":"):
    secs = secs * 60 + float(part)
  return {"wall_s": round(secs, 1), "cpu_s": round(user + sys_, 1)}


def cmd_int8(args):
  from vitjax.tools.quantize import quantized_accuracy  # pylint: disable=g-import-not-at-top
  rows = []
  for name in ["fp32_s0"] + [f"fp32_e40_s{s}" for s in (0, 1, 2)]:
    wd = os.path.join(args.root, name)
    if _final_accuracy(wd) is None:
      continue
    for bits, per_channel in ((8, True), (8, False), (4, True), (4, False)):
      r = quantized_accuracy(wd, bits, per_channel)
      r["run"] = name
      rows.append(r)
  _save("ptq", rows)


def cmd_bf16(args):
  import numpy as np  # pylint: disable=g-import-not-at-top
  out = {}
  for mp in ("fp32", "bf16"):
    accs, runs = [], []
    for seed in (0, 1, 2):
      wd = os.path.join(args.root, f"{mp}{args.tag}_s{seed}")
      acc = _final_accuracy(wd)
      if acc is None:
        continue
      run = {"seed": seed, "accuracy": acc}
      try:
        run.update(_time_stats(wd + ".log"))
      except (AttributeError, OSError):
        pass
      runs.append(run)
      accs.append(100 * acc)
    out[mp] = {"runs": runs, "mean": float(np.mean(accs)) if accs else None,
               "std": float(np.std(accs, ddof=1)) if len(accs) > 1 else None}
  out["gap_points"] = (out["bf16"]["mean"] - out["fp32"]["mean"]
                       if out["bf16"]["mean"] is not None and out["fp32"]["mean"] is not None
                       else None)
  _save("bf16" if args.tag == "_e40" else f"bf16{args.tag}", out)


def cmd_prune(args):
  from vitjax.tools.prune import prune_run  # pylint: disable=g-import-not-at-top
  seed = args.seed
  wd = os.path.join(args.root, f"fp32_s{seed}")
  out = os.path.join(args.root, f"pruned_s{seed}")
  ft = os.path.join(args.root, f"pruned_ft_s{seed}")
  if not os.path.exists(os.path.join(out, "checkpoints")):
    r = prune_run(wd, args.ratio, out)
    with open(out + ".json", "w") as f:
      json.dump(r, f)
  with open(out + ".json") as f:
    r = json.load(f)
  cmd = [sys.executable, "-m", "vitjax.main", "--config=configs/quickstart.py",
         f"--workdir={ft}", f"--config.seed={seed}", "--config.progress_bar=False",
         f"--config.model.head_counts={r['head_counts']}",
         f"--config.init_from.checkpoint={out}", "--config.init_from.reinit_head=False",
         f"--config.num_epochs={args.epochs}", "--config.optimizer.learning_rate=5e-4",
         "--config.optimizer.warmup_steps=20", "--config.checkpoint_every_steps=1000"]
  if not os.path.exists(os.path.join(ft, "metrics.jsonl")) or _final_accuracy(ft) is None:
    t0, c0 = time.time(), resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(cmd, check=True, cwd=os.path.dirname(HERE),
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    r["finetune_wall_s"] = round(time.time() - t0, 1)
    r["finetune_cpu_s"] = round(c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime, 1)
  r["finetune_command"] = " ".join(cmd[1:])
  r["finetune_epochs"] = args.epochs
  r["accuracy_finetuned"] = _final_accuracy(ft)
  r["accuracy_unpruned_trainer"] = _final_accuracy(wd)
  r["load_average"] = os.getloadavg()
  _save(f"prune_s{seed}", r)


def cmd_tome(args):
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from vitjax import data as data_lib  # pylint: disable=g-import-not-at-top
  from vitjax.tools.probe import load_run  # pylint: disable=g-import-not-at-top
  from vitjax.tools.quantize import eval_accuracy  # pylint: disable=g-import-not-at-top
  from vitjax.train import build_model  # pylint: disable=g-import-not-at-top
  config, _, variables = load_run(os.path.join(args.root, "tome"))
  info = data_lib.get_dataset_info(config)
  rs = [int(r) for r in args.rs.split(",")]
  models, fns, acc = {}, {}, {}
  for r in rs:
    config.model.tome_r = r
    models[r] = build_model(config, info.num_classes)
    acc[r] = eval_accuracy(models[r], variables, config)
    fns[r] = jax.jit(lambda v, x, m=models[r]: m.apply(v, x)[0])
  images = next(iter(data_lib.eval_iterator(config)))["image"]
  x = np.concatenate([images] * (args.batch // len(images) + 1))[:args.batch]
  for r in rs:  # compile + warm-up
    for _ in range(3):
      fns[r](variables, x).block_until_ready()
  wall = {r: [] for r in rs}
  cpu = {r: [] for r in rs}
  load0 = os.getloadavg()
  for _ in range(args.repeats):        # baseline and ToMe alternate, same process
    for r in rs:
      t0, c0 = time.perf_counter(), time.process_time()
      for _ in range(args.calls):
        fns[r](variables, x).block_until_ready()
      wall[r].append((time.perf_counter() - t0) / args.calls)
      cpu[r].append((time.process_time() - c0) / args.calls)
  rows = []
  base = statistics.median(wall[rs[0]])
  base_cpu = statistics.median(cpu[rs[0]])
  for r in rs:
    w, c = statistics.median(wall[r]), statistics.median(cpu[r])
    tokens = [64]
    for _ in range(config.model.get("depth", 4)):
      tokens.append(tokens[-1] - min(r, tokens[-1] // 2))
    rows.append({"r": r, "accuracy": acc[r], "images_per_s": args.batch / w,
                 "speedup": base / w, "cpu_s_per_batch": c, "cpu_speedup": base_cpu / c,
                 "patch_tokens_after_each_block": tokens[1:]})
  _save("tome", {"batch": args.batch, "repeats": args.repeats, "calls_per_repeat": args.calls,
                 "load_average_start": load0, "load_average_end": os.getloadavg(),
                 "rows": rows})


def cmd_qat(args):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from vitjax import data as data_lib  # pylint: disable=g-import-not-at-top
  from vitjax.compress import dequantize_params, quantize_params  # pylint: disable=g-import-not-at-top
  from vitjax.compress.quantize import fake_quantize  # pylint: disable=g-import-not-at-top
  from vitjax.tools.probe import load_run  # pylint: disable=g-import-not-at-top
  from vitjax.tools.quantize import eval_accuracy  # pylint: disable=g-import-not-at-top
  wd = os.path.join(args.root, args.run)
  config, model, variables = load_run(wd)
  teacher = variables["params"]
  config.batch_size = 128
  config.input.train_augment = "random_crop"
  config.input.crop_padding = 1
  config.input.flip = False
  rows = []
  for bits, per_channel in ((4, True), (4, False)):
    ptq = dequantize_params(quantize_params(teacher, bits, per_channel=per_channel))
    ptq_acc = eval_accuracy(model, {"params": ptq}, config)
    tx = optax.adam(args.lr)

    def loss_fn(p, images, labels):
      t = jax.lax.stop_gradient(model.apply({"params": teacher}, images)[0])
      s = model.apply({"params": fake_quantize(p, bits, per_channel)}, images)[0]
      tau = 1.0   # soft distillation from the fp32 model + the labels
      kl = jnp.mean(optax.kl_divergence(jax.nn.log_softmax(s / tau), jax.nn.softmax(t / tau)))
      ce = optax.softmax_cross_entropy_with_integer_labels(s, labels).mean()
      return 0.5 * kl + 0.5 * ce

    @jax.jit
    def step(p, opt, images, labels):
      loss, g = jax.value_and_grad(loss_fn)(p, images, labels)
      upd, opt = tx.update(g, opt, p)
      return optax.apply_updates(p, upd), opt, loss

    def finetune():
      p, opt = teacher, tx.init(teacher)
      for i, batch in enumerate(data_lib.train_iterator(config)):
        if i >= args.steps:
          break
        p, opt, _ = step(p, opt, batch["image"], batch["label"])
      return p
    p = finetune()
    qat = dequantize_params(quantize_params(p, bits, per_channel=per_channel))
    rows.append({"bits": bits, "per_channel": per_channel,
                 "fp32_accuracy": eval_accuracy(model, variables, config),
                 "ptq_accuracy": ptq_acc,
                 "qat_accuracy": eval_accuracy(model, {"params": qat}, config),
                 "qat_steps": args.steps, "lr": args.lr})
    print(rows[-1], flush=True)
  _save(f"qat_{args.run}", rows)


def cmd_remat(args):
  del args
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from experiments.benchmark import make_train_step  # pylint: disable=g-import-not-at-top
  from vitjax.models import create_model  # pylint: disable=g-import-not-at-top

  def setup(name, batch, size, remat, **kw):
    model = create_model(name, remat=remat, drop_path_rate=0.1, **kw)
    x = jax.random.normal(jax.random.PRNGKey(0), (batch, size, size, 3))
    y = jax.random.randint(jax.random.PRNGKey(1), (batch,), 0, model.num_classes)
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(2), x[:1])["params"])
    tx = optax.adamw(1e-3)
    step = make_train_step(model, tx)
    opt = jax.eval_shape(tx.init, params)
    compiled = jax.jit(step).lower(params, opt, x, y, jax.random.PRNGKey(3)).compile()
    m = compiled.memory_analysis()
    mem = {"temp_mb": m.temp_size_in_bytes / 2**20,
           "args_mb": m.argument_size_in_bytes / 2**20,
           "outputs_mb": m.output_size_in_bytes / 2**20}
    mem["peak_mb"] = mem["temp_mb"] + mem["args_mb"] + mem["outputs_mb"]
    return model, compiled, x, y, mem

  out = {}
  for label, name, batch, size, kw, run_steps in (
      ("vit_s16_b32", "vit_small_patch16_224", 32, 224, {}, False),
      ("quickstart_b1024", "vit_quickstart", 1024, 16,
       dict(hidden_size=64, mlp_dim=128), True)):
    row = {}
    losses = {}
    for remat in (False, True):
      model, compiled, x, y, mem = setup(name, batch, size, remat, **kw)
      row["remat" if remat else "plain"] = mem
      if run_steps:
        p = model.init(jax.random.PRNGKey(2), x[:1])["params"]
        opt = optax.adamw(1e-3).init(p)
        ls = []
        for i in range(3):
          p, opt, loss = compiled(p, opt, x, y, jax.random.PRNGKey(10 + i))
          ls.append(float(loss))
        losses["remat" if remat else "plain"] = ls
    if losses:
      row["losses"] = losses
      row["max_loss_diff"] = max(abs(a - b) for a, b in zip(losses["plain"], losses["remat"]))
    row["batch"], row["image_size"] = batch, size
    out[label] = row
    print(label, row, flush=True)
  _save("remat", out)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("cmd", choices=["int8", "bf16", "prune", "tome", "qat", "remat"])
  ap.add_argument("--root", default="/tmp/comp")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--tag", default="_e40", help="bf16: runs {fp32,bf16}TAG_s{seed}.")
  ap.add_argument("--ratio", type=float, default=0.3)
  ap.add_argument("--epochs", type=int, default=20, help="Recovery fine-tune epochs.")
  ap.add_argument("--rs", default="0,4,8,12,16")
  ap.add_argument("--batch", type=int, default=128)
  ap.add_argument("--repeats", type=int, default=7)
  ap.add_argument("--calls", type=int, default=5)
  ap.add_argument("--steps", type=int, default=100, help="QAT fine-tune steps.")
  ap.add_argument("--run", default="fp32_e40_s0", help="qat: the fp32 run (teacher).")
  ap.add_argument("--lr", type=float, default=1e-4)
  args = ap.parse_args()
  globals()["cmd_" + args.cmd](args)


if __name__ == "__main__":
  main()
