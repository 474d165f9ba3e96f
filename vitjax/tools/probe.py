"""kNN / linear-probe accuracy of the frozen features of any vitjax run.

  python -m vitjax.tools.probe --workdir=/tmp/mae_digits --method=knn
  python -m vitjax.tools.probe --workdir=/tmp/mae_digits --method=linear --features=mean
  python -m vitjax.tools.probe --workdir=/tmp/mae_digits --method=knn --random_init

Reads the workdir's config.json (model, dataset, preprocessing) and its latest
checkpoint (`--random_init`: a fresh init of the same architecture instead,
the baseline), extracts features of the dataset's train and eval splits and
prints one JSON line. See vitjax.evaluators for the methods.
"""

import json
import sys

from absl import app
from absl import flags

_WORKDIR = flags.DEFINE_string("workdir", None, "A vitjax workdir (config.json + checkpoints).")
_METHOD = flags.DEFINE_list("method", ["knn"], "knn, linear, or both (comma-separated).")
_FEATURES = flags.DEFINE_enum("features", "pre_logits", ["pre_logits", "mean"],
                              "out['pre_logits'] or the mean of the encoded tokens.")
_K = flags.DEFINE_integer("k", 20, "kNN neighbours.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.07, "kNN vote temperature.")
_STEPS = flags.DEFINE_integer("steps", 1000, "Linear probe: optimizer steps.")
_LR = flags.DEFINE_float("learning_rate", 1e-2, "Linear probe: peak learning rate.")
_WD = flags.DEFINE_float("weight_decay", 1e-4, "Linear probe: weight decay.")
_RANDOM = flags.DEFINE_bool("random_init", False,
                            "Probe a random init of the same model (the baseline).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of --random_init.")


def load_run(workdir: str, random_init: bool = False, seed: int = 0):
  """(config, model, variables) of a vitjax workdir: vitjax.runs.load_run as a tuple."""
  from vitjax import runs  # pylint: disable=g-import-not-at-top
  run = runs.load_run(workdir, random_init=random_init, seed=seed)
  return run.config, run.model, run.variables


def main(argv):
  del argv
  from vitjax import evaluators  # pylint: disable=g-import-not-at-top
  from vitjax.errors import UserError  # pylint: disable=g-import-not-at-top
  if not _WORKDIR.value:
    sys.stderr.write("error: --workdir is required\n")
    sys.exit(2)
  try:
    config, model, variables = load_run(_WORKDIR.value, _RANDOM.value, _SEED.value)
    result = evaluators.probe(model, variables, config, methods=_METHOD.value,
                              feature=_FEATURES.value, k=_K.value,
                              temperature=_TEMPERATURE.value, steps=_STEPS.value,
                              learning_rate=_LR.value, weight_decay=_WD.value)
  except UserError as e:
    sys.stderr.write(f"vitjax error: {e}\n")
    sys.exit(2)
  result.update(workdir=_WORKDIR.value, model=config.model_name, features=_FEATURES.value,
                random_init=_RANDOM.value)
  print(json.dumps(result), flush=True)


if __name__ == "__main__":
  app.run(main)
