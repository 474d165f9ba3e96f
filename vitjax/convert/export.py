"""vitjax -> a Hugging Face snapshot folder that `transformers` loads.

  export_hf('/runs/swin_digits', '/exports/swin_digits')
  # then: transformers.AutoModelForImageClassification.from_pretrained('/exports/swin_digits')

`export_hf(source, out_dir)` writes `config.json` and `model.safetensors`
(float32, the Hub's tensor names) with the family's registered exporter
(`vitjax.convert.registry.register_exporter`, next to each converter), and,
for a workdir, `preprocessor_config.json` (the run's resize and
normalisation) and the data set's class names as `id2label`. Families with an
exporter: ViT / DeiT, Swin v1 / v2, ResNet (BatchNorm statistics included),
ConvNeXt, SegFormer (`list_exporters()`).
"""

import json
import os
from typing import Optional

import numpy as np

from vitjax.convert.registry import Converted, get_exporter
from vitjax.errors import UserError

WEIGHTS = "model.safetensors"


def _from_source(source, step, ema):
  """(model, variables, run config or None, class names or None) of `source`."""
  if isinstance(source, Converted):
    return source.create_model(), source.variables, None, None
  from vitjax import runs  # pylint: disable=g-import-not-at-top
  if isinstance(source, runs.Run):
    run = source
  elif isinstance(source, (str, os.PathLike)):
    run = runs.load_run(os.fspath(source), step=step, ema=ema)
  else:
    raise UserError(f"export_hf exports a vitjax workdir (a path), a vitjax.runs.Run or a "
                    f"vitjax.convert.Converted, not a {type(source).__name__}.")
  names = run.info.class_names if run.info is not None else None
  return run.model, run.variables, run.config, names


def _float32(tree) -> dict:
  out = {}
  for k, v in tree.items():
    v = np.asarray(v)
    # np.asarray(order='C'), not np.ascontiguousarray: that makes scalars 1-D.
    out[k] = np.asarray(v.astype(np.float32) if v.dtype.kind in "fV" else v, order="C")
  return out


def _preprocessor(config, family: str) -> dict:
  s = int(config.input.image_size)
  return {
      "image_processor_type": ("SegformerImageProcessor" if family == "segformer"
                               else "ViTImageProcessor"),
      "do_resize": True, "size": {"height": s, "width": s}, "resample": 2,
      "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
      "image_mean": [float(m) for m in config.input.mean],
      "image_std": [float(x) for x in config.input.std]}


def export_hf(source, out_dir: str, *, image_size: Optional[int] = None,
              step: Optional[int] = None, ema: Optional[bool] = None) -> str:
  """Writes `source` as a Hugging Face snapshot in `out_dir`; returns `out_dir`.

  source: a vitjax workdir (its latest checkpoint, EMA weights when kept;
    `step` / `ema` as for `vitjax.runs.load_run`), a `vitjax.runs.Run`, or a
    `vitjax.convert.Converted` (e.g. what `convert_checkpoint` returned).
  image_size: recorded in config.json where HF keeps one (default: the run's
    config.input.image_size; for ViT the position embedding's size).
  The folder may exist; a vitjax workdir is refused (its config.json would be
  overwritten).
  """
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  model, variables, run_config, names = _from_source(source, step, ema)
  exporter = get_exporter(model)
  if image_size is None:
    image_size = int(run_config.input.image_size) if run_config is not None else 224
  state_dict, config = exporter(model, variables, image_size)
  if os.path.isdir(os.path.join(out_dir, "checkpoints")) or os.path.isfile(
      os.path.join(out_dir, "metrics.jsonl")):
    raise UserError(f"{out_dir} holds a vitjax run; exporting there would overwrite its "
                    "config.json. Give another --out folder.")
  if names and "id2label" in config and len(names) == len(config["id2label"]):
    config["id2label"] = {str(i): str(n) for i, n in enumerate(names)}
    config["label2id"] = {str(n): i for i, n in enumerate(names)}
  config.setdefault("torch_dtype", "float32")
  os.makedirs(out_dir, exist_ok=True)
  tmp = os.path.join(out_dir, WEIGHTS + ".tmp")
  save_file(_float32(state_dict), tmp, metadata={"format": "pt"})
  os.replace(tmp, os.path.join(out_dir, WEIGHTS))
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump(config, f, indent=2, sort_keys=True)
  if run_config is not None:
    with open(os.path.join(out_dir, "preprocessor_config.json"), "w") as f:
      json.dump(_preprocessor(run_config, exporter.family), f, indent=2)
  return out_dir

