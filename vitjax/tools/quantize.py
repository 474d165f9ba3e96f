"""Test accuracy of a vitjax run with its weights quantized to int8.

  python -m vitjax.tools.quantize --workdir=/tmp/vitjax_quickstart [--bits 8]

Reads the workdir's config.json and latest checkpoint, evaluates the eval
split with the float32 weights and with per-channel symmetric int8 weights
(vitjax.compress.quantize), and prints one JSON line: both accuracies, the
change in points, and the stored size of the params.
"""

import argparse
import json
import sys


def eval_accuracy(model, variables, config) -> float:
  """Top-1 accuracy of `variables` on the config's eval split."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from vitjax import data as data_lib  # pylint: disable=g-import-not-at-top
  fwd = jax.jit(lambda v, x: jnp.argmax(model.apply(v, x)[0], -1))
  correct = count = 0
  for batch in data_lib.eval_iterator(config):
    pred = np.asarray(fwd(variables, batch["image"]))
    mask = np.asarray(batch["mask"]).astype(bool)
    correct += int(np.sum((pred == np.asarray(batch["label"])) & mask))
    count += int(mask.sum())
  return correct / max(count, 1)


def quantized_accuracy(workdir: str, bits: int = 8, per_channel: bool = True) -> dict:
  from vitjax.compress import (dequantize_params, quantize_params,  # pylint: disable=g-import-not-at-top
                               quantized_size_bytes)
  from vitjax.runs import load_run  # pylint: disable=g-import-not-at-top
  run = load_run(workdir)
  config, model, variables = run.config, run.model, run.variables
  fp32 = eval_accuracy(model, variables, config)
  q = quantize_params(variables["params"], bits=bits, per_channel=per_channel)
  stored, full = quantized_size_bytes(q)
  qvars = dict(variables, params=dequantize_params(q))
  quant = eval_accuracy(model, qvars, config)
  return {"model": config.model_name, "bits": bits, "per_channel": per_channel,
          "fp32_accuracy": fp32,
          "int_accuracy": quant, "change_points": 100 * (quant - fp32),
          "param_bytes_fp32": full, "param_bytes_quantized": stored}


def main(argv=None):
  from vitjax.errors import UserError  # pylint: disable=g-import-not-at-top
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--workdir", required=True, help="A vitjax workdir (config.json + checkpoints).")
  ap.add_argument("--bits", type=int, default=8, help="Weight bits (2..8).")
  ap.add_argument("--per_tensor", action="store_true",
                  help="One scale per weight tensor instead of per output channel.")
  args = ap.parse_args(argv)
  try:
    result = quantized_accuracy(args.workdir, args.bits, not args.per_tensor)
  except UserError as e:
    sys.stderr.write(f"vitjax error: {e}\n")
    sys.exit(2)
  print(json.dumps(result), flush=True)


if __name__ == "__main__":
  main()
