"""mIoU vs training steps of SegFormer on the shapes set, without tf.data.

A small pure-JAX loop (numpy flips + shifts instead of the full dense
pipeline, same model / loss / metrics / optimizer family as the trainer), to
pick the steps / batch / decoder width of configs/segformer_shapes.py on any
machine where TensorFlow is not installed (e.g. a GPU box), and to time a
train step (pin the cores with taskset for a 2-core CPU figure).

  python experiments/segformer_shapes_sweep.py --steps 1500 --batch 32 --decoder 256
"""

import argparse
import importlib.util
import json
import os
import sys
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax

if importlib.util.find_spec("tensorflow") is None:
  # vitjax.data / vitjax.tasks import the tf.data pipelines in their package
  # __init__; register the bare packages so their TF-free modules still import.
  _root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "vitjax")
  for _name in ("data", "tasks"):
    _pkg = types.ModuleType(f"vitjax.{_name}")
    _pkg.__path__ = [os.path.join(_root, _name)]
    sys.modules.setdefault(f"vitjax.{_name}", _pkg)

from vitjax.data import shapes  # pylint: disable=g-import-not-at-top,wrong-import-position
from vitjax.models.segformer import SEGFORMER_SIZES, SegFormer  # pylint: disable=wrong-import-position
from vitjax.tasks.segmentation import (confusion_matrix, pixel_cross_entropy,  # pylint: disable=wrong-import-position
                                       segmentation_metrics, upsample_logits)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--steps", type=int, default=1500)
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--decoder", type=int, default=256)
  ap.add_argument("--lr", type=float, default=2e-3)
  ap.add_argument("--train", type=int, default=2000)
  ap.add_argument("--eval", type=int, default=500)
  ap.add_argument("--eval_every", type=int, default=250)
  ap.add_argument("--size", type=int, default=64)
  ap.add_argument("--time_only", type=int, default=0, help="only time this many steps")
  a = ap.parse_args()
  t0 = time.time()
  tr_x, tr_y = shapes.as_arrays(shapes.generate("train", a.train, 0, a.size))
  ev_x, ev_y = shapes.as_arrays(shapes.generate("validation", a.eval, 0, a.size))
  norm = lambda x: (x.astype(np.float32) / 255.0 - 0.5) / 0.5
  print(f"data {time.time() - t0:.1f}s", flush=True)
  kw = dict(SEGFORMER_SIZES["b0"], decoder_dim=a.decoder)
  model = SegFormer(num_classes=4, drop_path_rate=0.0, dropout=0.0, **kw)
  v = model.init(jax.random.PRNGKey(0), jnp.zeros((1, a.size, a.size, 3)))
  params, stats = v["params"], v["batch_stats"]
  sched = optax.warmup_cosine_decay_schedule(0.0, a.lr, 100, a.steps)
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(sched, weight_decay=0.01))
  opt = tx.init(params)

  @jax.jit
  def step(params, stats, opt, x, y):
    def loss_fn(p):
      (logits, _), new = model.apply({"params": p, "batch_stats": stats}, x, train=True,
                                     mutable=["batch_stats"])
      tot, cnt = pixel_cross_entropy(upsample_logits(logits, a.size, a.size), y, 255)
      return tot / cnt, new["batch_stats"]
    (loss, stats), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
    u, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, u), stats, opt, loss

  @jax.jit
  def ev(params, stats, x, y):
    logits, _ = model.apply({"params": params, "batch_stats": stats}, x)
    pred = jnp.argmax(upsample_logits(logits, a.size, a.size), -1)
    return confusion_matrix(y, pred, 4, 255)

  rng = np.random.default_rng(0)

  def batch():
    i = rng.integers(0, a.train, a.batch)
    x, y = tr_x[i].copy(), tr_y[i].astype(np.int32)
    flip = rng.random(a.batch) < 0.5
    x[flip], y[flip] = x[flip, :, ::-1], y[flip, :, ::-1]
    dy, dx = rng.integers(-8, 9, 2)
    x, y = np.roll(x, (dy, dx), (1, 2)), np.roll(y, (dy, dx), (1, 2))
    return norm(x), y

  x, y = batch()
  t = time.time()
  params, stats, opt, loss = step(params, stats, opt, x, y)
  jax.block_until_ready(loss)
  print(f"compile {time.time() - t:.1f}s", flush=True)
  if a.time_only:
    t = time.time()
    for _ in range(a.time_only):
      params, stats, opt, loss = step(params, stats, opt, *batch())
    jax.block_until_ready(loss)
    print(json.dumps({"s_per_step": (time.time() - t) / a.time_only, "batch": a.batch,
                      "decoder": a.decoder}), flush=True)
    return
  t = time.time()
  for s in range(1, a.steps):
    params, stats, opt, loss = step(params, stats, opt, *batch())
    if (s + 1) % a.eval_every == 0 or s + 1 == a.steps:
      cm = sum(np.asarray(ev(params, stats, norm(ev_x[i:i + 100]),
                             ev_y[i:i + 100].astype(np.int32)))
               for i in range(0, a.eval, 100))
      m = segmentation_metrics(cm, ["bg", "circle", "square", "triangle"])
      print(json.dumps({"step": s + 1, "loss": float(loss), "s": round(time.time() - t, 1),
                        **{k: round(v, 4) for k, v in m.items()}}), flush=True)


if __name__ == "__main__":
  main()
