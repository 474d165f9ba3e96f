"""Evaluates a run or an imported checkpoint once, without training.

  python -m vitjax.tools.evaluate --workdir=W [--config.dataset.eval_split=train]
  python -m vitjax.tools.evaluate --checkpoint=/snapshots/swin --config=configs/finetune.py:swin_tiny_patch4_window7_224 --out=DIR
  python -m vitjax.tools.evaluate --checkpoint=hf:org/name --workdir=W

The model and weights are a workdir's (its latest checkpoint, EMA weights when
kept; --step picks another) or, with --checkpoint, published weights read by
`vitjax.convert.load` (a Hugging Face snapshot folder, a .safetensors file or
hf:<org>/<name> from the offline cache; the family is recognised). The config
is --config (configs/NAME.py[:ARG]) or else the workdir's config.json, with
any `--config.<field>=<value>` overrides; one pass over its eval split runs
through the task's own evaluation (the trainer's `evaluate`), nothing is
trained. The metrics are printed as one JSON line and appended to
`metrics.jsonl` of --out (default: the workdir) as `evaluate/<metric>` at the
checkpoint's step (0 for an imported checkpoint), apart from the trainer's
`eval/` records.
"""

import argparse
import ast
import dataclasses
import importlib.util
import json
import os
import sys
from typing import Any, List, Optional

from vitjax.errors import UserError


@dataclasses.dataclass
class Subject:
  """What a tool evaluates or predicts with: a config, a model and its weights."""
  config: Any
  model: Any
  variables: dict
  step: int            # the checkpoint's step (0 for an imported checkpoint)
  what: str            # the workdir or checkpoint, for messages and records
  class_names: Optional[tuple] = None


def load_config_file(spec: str):
  """configs/NAME.py[:ARG] -> get_config(ARG)."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise UserError(f"--config={spec!r}: no file {path}; give configs/NAME.py[:ARG].")
  module_spec = importlib.util.spec_from_file_location("vitjax_user_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def _parse_value(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text  # a plain string (e.g. a dataset name)


def apply_overrides(config, overrides: List[str]):
  """Applies `--config.a.b=value` arguments (values parsed as Python literals)."""
  for item in overrides:
    if not item.startswith("--config.") or "=" not in item:
      raise UserError(f"Unexpected argument {item!r}; config fields are set with "
                      "--config.<field>=<value>.")
    key, _, text = item[len("--config."):].partition("=")
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
      if p not in node:
        raise UserError(f"--config.{key}: the config has no field {p!r}.")
      node = node[p]
    value = _parse_value(text)
    try:
      with node.unlocked():
        node[leaf] = value
    except (TypeError, ValueError, AttributeError) as e:
      raise UserError(f"--config.{key}={text}: {e}") from None
  return config


def load_subject(workdir: str = "", checkpoint: str = "", config_spec: str = "",
                 overrides: List[str] = (), step: Optional[int] = None,
                 source: str = "auto") -> Subject:
  """The config, model and weights named by a tool's flags (see the module docstring)."""
  from vitjax import runs  # pylint: disable=g-import-not-at-top
  if not workdir and not checkpoint:
    raise UserError("Give --workdir=W (a vitjax run) or --checkpoint=PATH|hf:org/name.")
  if config_spec:
    config = load_config_file(config_spec)
  elif workdir:
    config = runs.read_config(workdir)
  else:
    raise UserError("--checkpoint needs a config for the data and preprocessing: give "
                    "--config=configs/NAME.py[:ARG] (or --workdir=W to use a run's).")
  config = apply_overrides(config, list(overrides))
  info = runs.dataset_info(config)
  if not checkpoint:
    run = runs.load_run(workdir, step=step, config=config, num_classes=info.num_classes)
    return Subject(config, run.model, run.variables, run.step or 0, workdir,
                   tuple(info.class_names))
  from vitjax.convert import load  # pylint: disable=g-import-not-at-top
  cv = load(checkpoint, source=source)
  model = cv.create_model()
  head = getattr(model, "num_classes", None)
  if head is not None and head != info.num_classes and not info.multi_label:
    raise UserError(
        f"--checkpoint={checkpoint} has a {head}-class head but the config's data set "
        f"({config.dataset.name}) has {info.num_classes} classes; evaluating needs the same "
        "classes. Fine-tune it first (python -m vitjax.main with "
        "--config.init_from.checkpoint=...).")
  return Subject(config, model, cv.variables, 0, checkpoint, tuple(info.class_names))


def evaluate(subject: Subject) -> dict:
  """One pass of the config's task over its eval split; returns its metrics."""
  import types  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from vitjax import sharding as shard_lib  # pylint: disable=g-import-not-at-top
  from vitjax import train  # pylint: disable=g-import-not-at-top
  from vitjax.config import validate_config  # pylint: disable=g-import-not-at-top
  from vitjax.tasks import get_task  # pylint: disable=g-import-not-at-top
  config = subject.config
  mesh = shard_lib.create_mesh(config.sharding.mesh)
  validate_config(config, shard_lib.data_size(mesh), jax.process_count())
  task_cls = get_task(config.task)
  task_cls.check_config(config)
  task = task_cls(config, task_cls.dataset_info(config), subject.model)
  variables = dict(subject.variables)
  repl = shard_lib.replicated(mesh)
  params = jax.device_put(variables.pop("params"), repl)
  state = types.SimpleNamespace(params=params, ema_params=None,
                                model_state=jax.device_put(variables, repl))
  return train.evaluate(train.make_eval_fn(task, repl), state, config, mesh, task)


def write_metrics(out: str, step: int, metrics: dict):
  """Appends `evaluate/<metric>` at `step` to out/metrics.jsonl (nothing superseded)."""
  from vitjax.metric_writer import MetricWriter  # pylint: disable=g-import-not-at-top
  os.makedirs(out, exist_ok=True)
  # start_step: every earlier record stays (the writer supersedes records after it).
  writer = MetricWriter(out, tensorboard=False, start_step=sys.maxsize)
  try:
    writer.write(step, {f"evaluate/{k}": v for k, v in metrics.items()})
  finally:
    writer.close()


def run(workdir: str = "", checkpoint: str = "", config_spec: str = "", overrides=(),
        out: str = "", step: Optional[int] = None, source: str = "auto") -> dict:
  """Evaluates, writes the metrics (to `out` or the workdir) and returns them."""
  out = out or workdir
  if not out:
    raise UserError("--checkpoint without --workdir: give --out=DIR for metrics.jsonl.")
  subject = load_subject(workdir, checkpoint, config_spec, overrides, step, source)
  metrics = evaluate(subject)
  write_metrics(out, subject.step, metrics)
  return metrics


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--workdir", default="")
  ap.add_argument("--checkpoint", default="")
  ap.add_argument("--source", default="auto", choices=("auto", "hf", "timm"))
  ap.add_argument("--config", default="")
  ap.add_argument("--out", default="")
  ap.add_argument("--step", type=int, default=None)
  args, overrides = ap.parse_known_args(argv)
  try:
    metrics = run(args.workdir, args.checkpoint, args.config, overrides, args.out, args.step,
                  args.source)
  except UserError as e:
    raise SystemExit(f"vitjax error: {e}") from None
  print(json.dumps({"evaluated": args.checkpoint or args.workdir,
                    **{k: float(v) for k, v in metrics.items()}}))


if __name__ == "__main__":
  main()
