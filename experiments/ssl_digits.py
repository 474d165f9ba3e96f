"""MAE pretraining on the embedded UCI digits: frozen-feature probes and fine-tuning.

  python experiments/ssl_digits.py [--epochs 60] [--workdir /tmp/ssl_digits] [--out experiments]

1. MAE pretraining (configs/mae_digits.py, labels unused) for --epochs on the
   1,437 train digits, through `python -m vitjax.main` (the one trainer).
2. Frozen features of the MAE encoder vs a random init of the same
   architecture (seed 0): DINO kNN (k=20, T=0.07) and an optax linear probe,
   on the class token ('pre_logits') and the mean patch token ('mean');
   train split = the 1,437 train digits, test = the 360 held-out ones. The
   preprocessed pixels themselves (768 values) are probed as a reference.
3. Fine-tuning: configs/quickstart.py's ViT (the same encoder + a new head)
   with --config.init_from.checkpoint=<the MAE workdir>, against the same
   config from scratch, for the same --epochs (the supervised budget).

Every step reuses its workdir when it already holds a finished run (the
trainer resumes); delete --workdir to measure again. Writes ssl_digits.md
(and .json) into --out.
"""

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from vitjax import evaluators  # pylint: disable=g-import-not-at-top
from vitjax.metric_writer import read_metrics  # pylint: disable=g-import-not-at-top
from vitjax.tools.probe import load_run  # pylint: disable=g-import-not-at-top


def run_main(config, workdir, *overrides):
  """One run through the CLI; returns (final eval metrics, wall seconds)."""
  cmd = [sys.executable, "-m", "vitjax.main", f"--config={ROOT}/configs/{config}.py",
         f"--workdir={workdir}", "--config.progress_bar=False"] + [
             f"--config.{o}" for o in overrides]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  t0 = time.time()
  p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
  wall = time.time() - t0
  if p.returncode:
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{p.stderr[-3000:]}")
  final = {}
  for row in read_metrics(workdir):
    final.update({k: v for k, v in row.items() if k.startswith("eval/")})
  print(f"{config} -> {workdir}: {final} ({wall:.0f} s)", flush=True)
  return final, wall


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--epochs", type=int, default=60)
  ap.add_argument("--workdir", default="/tmp/ssl_digits")
  ap.add_argument("--out", default=os.path.join(ROOT, "experiments"))
  args = ap.parse_args()
  ep = f"num_epochs={args.epochs}"
  w = lambda name: os.path.join(args.workdir, name)
  res = {"epochs": args.epochs}

  mae, res["mae_wall_s"] = run_main("mae_digits", w("mae"), ep)
  res["mae_eval_reconstruction_loss"] = mae.get("eval/loss")

  class Pixels:  # reference: the preprocessed pixels themselves as features
    @staticmethod
    def apply(variables, images, train=False):
      del variables, train
      return None, {"pre_logits": images.reshape(images.shape[0], -1)}
  config, _, _ = load_run(w("mae"), random_init=True)
  r = evaluators.probe(Pixels(), {}, config)
  res["probe/pixels/pre_logits"] = r
  print("pixels", r, flush=True)

  for tag, random_init in (("mae", False), ("random_init", True)):
    config, model, variables = load_run(w("mae"), random_init=random_init, seed=0)
    for feature in evaluators.FEATURES:
      t0 = time.time()
      r = evaluators.probe(model, variables, config, feature=feature)
      res[f"probe/{tag}/{feature}"] = dict(r, wall_s=time.time() - t0)
      print(tag, feature, r, flush=True)

  ft, res["finetune_wall_s"] = run_main("quickstart", w("finetune"), ep,
                                        f"init_from.checkpoint={w('mae')}")
  sc, res["scratch_wall_s"] = run_main("quickstart", w("scratch"), ep)
  res["finetune_accuracy"] = ft.get("eval/accuracy")
  res["scratch_accuracy"] = sc.get("eval/accuracy")

  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "ssl_digits.json"), "w") as f:
    json.dump(res, f, indent=2)
  lines = [
      "# MAE on the digits: frozen probes and fine-tuning",
      "",
      f"`python experiments/ssl_digits.py --epochs {args.epochs}` (2 shared CPU cores). "
      f"MAE pretraining: {args.epochs} epochs, {res['mae_wall_s']:.0f} s, eval "
      f"reconstruction loss {res['mae_eval_reconstruction_loss']:.4f}.",
      "",
      "| encoder | features | kNN (k=20, T=0.07) | linear probe |",
      "| --- | --- | --- | --- |"]
  for tag in ("mae", "random_init", "pixels"):
    for feature in evaluators.FEATURES:
      r = res.get(f"probe/{tag}/{feature}")
      if r is None:
        continue
      lines.append(f"| {tag} | {feature} | {r['knn_accuracy']:.3f} | "
                   f"{r['linear_accuracy']:.3f} |")
  lines += ["", f"| quickstart ViT, {args.epochs} epochs | test accuracy | wall s |",
            "| --- | --- | --- |",
            f"| from MAE (init_from) | {res['finetune_accuracy']:.4f} | "
            f"{res['finetune_wall_s']:.0f} |",
            f"| from scratch | {res['scratch_accuracy']:.4f} | {res['scratch_wall_s']:.0f} |"]
  with open(os.path.join(args.out, "ssl_digits.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
