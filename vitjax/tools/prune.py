"""Prune the least important attention heads of a trained ViT / DeiT run.

  python -m vitjax.tools.prune --workdir=/tmp/vitjax_quickstart --ratio=0.3 \
      --out=/tmp/vitjax_pruned

Scores every head (vitjax.compress.prune: Michel et al. |dL/d head mask|
over --batches training batches), removes the least important --ratio of them
across layers, and writes --out as a vitjax workdir (config.json with
model.head_counts set, checkpoints/0 with the shrunk params) that the eval
tools read and the trainer fine-tunes from. Prints one JSON line: accuracy,
params and forward FLOPs before and after, the head counts, and the recovery
fine-tune command (config.init_from.checkpoint=--out, same head_counts).
"""

import argparse
import json
import os
import sys


def _forward_flops(model, variables, image_size):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  x = jnp.zeros((1, image_size, image_size, 3))
  cost = jax.jit(lambda v, x: model.apply(v, x)[0]).lower(variables, x).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", 0.0)) if cost else 0.0


def prune_run(workdir: str, ratio: float, out: str, num_batches: int = 8) -> dict:
  import flax  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from vitjax import data as data_lib  # pylint: disable=g-import-not-at-top
  from vitjax.compress import prune  # pylint: disable=g-import-not-at-top
  from vitjax.errors import UserError  # pylint: disable=g-import-not-at-top
  from vitjax.runs import build_model, load_run  # pylint: disable=g-import-not-at-top
  from vitjax.tools.quantize import eval_accuracy  # pylint: disable=g-import-not-at-top

  run = load_run(workdir)
  config, model, variables = run.config, run.model, run.variables
  if not hasattr(model, "block_heads"):
    raise UserError(f"model {config.model_name!r}: head pruning builds the pruned model "
                    "with per-block head counts, which only the ViT / DeiT family "
                    "(vitjax/models/vit.py) takes.")
  if os.path.exists(os.path.join(out, "checkpoints")):
    raise UserError(f"--out={out} already holds checkpoints; give a new directory.")
  head_dim = model.hidden_size // model.num_heads
  params = variables["params"]
  state = {k: v for k, v in variables.items() if k != "params"}

  def loss_fn(p, batch):
    logits, _ = model.apply({"params": p, **state}, batch["image"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()

  batches = []
  for i, b in enumerate(data_lib.train_iterator(config)):
    if i >= num_batches:
      break
    batches.append({"image": b["image"], "label": b["label"]})
  importance = prune.head_importance(loss_fn, params, batches, head_dim)
  keep = prune.select_heads(importance, ratio)
  new_params = prune.prune_heads(params, keep, head_dim)
  old_heads = model.block_heads()
  # Block i's attention is params['block_i']['attn']; heads kept per block.
  heads = list(old_heads)
  for path, k in keep.items():
    heads[int(path[0].split("_")[1])] = len(k)
  config.model.head_counts = ",".join(str(h) for h in heads)
  pruned_model, _ = build_model(config, model.num_classes)
  new_vars = {"params": new_params, **state}

  s = config.input.image_size
  result = {
      "model": config.model_name, "ratio": ratio,
      "heads_before": sum(old_heads), "heads_after": sum(heads),
      "head_counts": config.model.head_counts,
      "importance": {"/".join(p): [round(float(x), 4) for x in v]
                     for p, v in importance.items()},
      "params_before": prune.count_params(params),
      "params_after": prune.count_params(new_params),
      "flops_before": _forward_flops(model, variables, s),
      "flops_after": _forward_flops(pruned_model, new_vars, s),
      "accuracy_before": eval_accuracy(model, variables, config),
      "accuracy_pruned": eval_accuracy(pruned_model, new_vars, config),
  }
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(workdir, "config.json")) as f:
    stored = json.load(f)
  stored.setdefault("model", {})["head_counts"] = config.model.head_counts
  with open(os.path.join(out, "config.json"), "w") as f:
    json.dump(stored, f, indent=2)
  with ocp.CheckpointManager(os.path.abspath(os.path.join(out, "checkpoints")),
                             item_handlers=ocp.StandardCheckpointHandler()) as mngr:
    item = {"params": flax.core.unfreeze(new_params)}
    if state:
      item["model_state"] = state
    mngr.save(0, args=ocp.args.StandardSave(item))
    mngr.wait_until_finished()
  result["finetune"] = (
      f"python -m vitjax.main --config=CONFIG --workdir=NEW_WORKDIR "
      f"--config.model.head_counts={config.model.head_counts} "
      f"--config.init_from.checkpoint={out} --config.init_from.reinit_head=False "
      "--config.num_epochs=N")
  del jax
  return result


def main(argv=None):
  from vitjax.errors import UserError  # pylint: disable=g-import-not-at-top
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--workdir", required=True, help="A trained vitjax ViT / DeiT workdir.")
  ap.add_argument("--ratio", type=float, default=0.3, help="Fraction of all heads removed.")
  ap.add_argument("--out", required=True, help="New workdir for the pruned model.")
  ap.add_argument("--batches", type=int, default=8,
                  help="Training batches the head importance is accumulated over.")
  args = ap.parse_args(argv)
  try:
    result = prune_run(args.workdir, args.ratio, args.out, args.batches)
  except (UserError, ValueError) as e:
    sys.stderr.write(f"vitjax error: {e}\n")
    sys.exit(2)
  print(json.dumps(result), flush=True)


if __name__ == "__main__":
  main()
