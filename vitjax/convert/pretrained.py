"""One import entry point for published weights of every supported family.

`load(source_path, source='auto'|'hf'|'timm', **overrides) -> Converted`
reads a Hugging Face snapshot folder, a .safetensors file or
`hf:<org>/<name>` (the offline cache, vitjax.convert.hub) and runs the
registered converter of its family: with source='auto' the family comes from
the snapshot's config.json (`model_type`, then `architectures`, via the
converter registry) or, for a timm checkpoint, from its tensor names.
The result is checked against the model its kwargs build: a tensor whose
shape does not fit (a snapshot whose weights disagree with its config.json)
is one UserError naming it and both shapes.

`load_for_model(checkpoint, model, source=...)` is the trainer's
`config.init_from` path: it refuses a checkpoint of another family than the
config's model (naming both) and returns (params, other collections, e.g.
BatchNorm statistics) for `vitjax.checkpoint.merge_params`.
"""

import dataclasses
import logging
import os
from typing import Any, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from vitjax.convert import hub
from vitjax.convert.common import (PICKLE_SUFFIXES, flatten_params, load_state_dict,
                                   read_json_config)
from vitjax.convert.registry import Converted, ConverterInfo, list_converters
from vitjax.errors import UserError

log = logging.getLogger(__name__)

SOURCES = ("auto", "hf", "timm")

# timm checkpoints carry no model_type: their family is read from tensor names,
# the first (family, tensor-name suffix) that matches wins (hybrids and CrossViT
# before the plain ViT, whose names they share).
TIMM_SIGNATURES = (
    ("vit_hybrid", "patch_embed.backbone.stem.conv.weight"),
    ("crossvit", "patch_embed.0.proj.weight"),
    ("vit", "patch_embed.proj.weight"),
)

# Model fields that may differ between a checkpoint and the model it fine-tunes.
_TRAINING_FIELDS = ("num_classes", "dtype", "param_dtype", "dropout", "attention_dropout",
                    "drop_path_rate", "drop_rate", "image_size", "window_size", "remat",
                    "head_zero_init", "head_init_scale")


def _known() -> str:
  """What `auto` recognises, for error messages."""
  hf = sorted({t for c in list_converters("hf") for t in c.model_types})
  timm = sorted({c.family for c in list_converters("timm")})
  return (f"Hugging Face model_type {', '.join(hf)}; timm families {', '.join(timm)}")


def resolve_path(source_path) -> str:
  """A local path for `source_path` (hf:<org>/<name> resolved in the offline cache)."""
  if hub.is_hub_spec(source_path):
    return hub.resolve(source_path)
  if not isinstance(source_path, (str, os.PathLike)):
    raise UserError(f"Expected a checkpoint path or hf:<org>/<name>, got "
                    f"{type(source_path).__name__}.")
  path = os.path.expanduser(os.fspath(source_path))
  if path.lower().endswith(PICKLE_SUFFIXES):
    load_state_dict(path)  # raises the pickle message with the conversion recipe
  if not os.path.exists(path):
    raise UserError(f"Checkpoint {path} does not exist (give a Hugging Face snapshot "
                    "folder, a .safetensors file or hf:<org>/<name>).")
  return path


def is_published(path) -> bool:
  """Whether `path` names published (HF / timm) weights rather than a vitjax run:
  hf:<org>/<name>, a .safetensors file or a folder holding model.safetensors."""
  if hub.is_hub_spec(path):
    return True
  if not isinstance(path, (str, os.PathLike)):
    return False
  path = os.path.expanduser(os.fspath(path))
  return path.lower().endswith(".safetensors") or any(
      os.path.isfile(os.path.join(path, f))
      for f in ("model.safetensors", "model.safetensors.index.json"))


def _config_of(path: str) -> Optional[Dict[str, Any]]:
  """The config.json next to the weights (in the folder, or beside the file)."""
  folder = path if os.path.isdir(path) else os.path.dirname(path)
  cfg = os.path.join(folder, "config.json")
  return read_json_config(cfg) if os.path.isfile(cfg) else None


def _hf_by_config(cfg: Dict[str, Any]) -> Optional[ConverterInfo]:
  convs = list_converters("hf")
  model_type = cfg.get("model_type")
  for c in convs:
    if model_type and model_type in c.model_types:
      return c
  for arch in cfg.get("architectures") or ():
    for c in convs:
      if arch in c.architectures:
        return c
  return None


def _hf_by_names(sd) -> Optional[ConverterInfo]:
  """An HF state dict without config.json: its first name component is the
  model_type (HF's base_model_prefix: 'vit.', 'swin.', 'convnext.', ...)."""
  heads = {k.split(".", 1)[0] for k in sd}
  for c in list_converters("hf"):
    if heads & set(c.model_types):
      if c.family == "vit" and any(k.startswith("decoder.decoder_pred.") for k in sd):
        continue  # an MAE: its encoder is named 'vit.' too
      return c
  return None


def _timm_by_names(sd) -> Optional[ConverterInfo]:
  families = {c.family: c for c in list_converters("timm")}
  for family, suffix in TIMM_SIGNATURES:
    if family in families and any(k.endswith(suffix) for k in sd):
      return families[family]
  return None


def detect(sd, cfg: Optional[Dict[str, Any]], source: str = "auto") -> ConverterInfo:
  """The converter for a state dict (+ config.json dict): by model_type /
  architectures, else by tensor names; UserError listing what is known."""
  is_timm_cfg = bool(cfg) and "model_type" not in cfg and "architecture" in cfg
  found = None
  if source in ("auto", "hf") and cfg and not is_timm_cfg:
    found = _hf_by_config(cfg)
    if found is None:
      what = (f"model_type {cfg.get('model_type')!r}" if cfg.get("model_type") else
              f"architectures {cfg.get('architectures')}")
      raise UserError(f"The checkpoint's config.json names {what}, which vitjax cannot "
                      f"import. Supported: {_known()}.")
  if found is None and source in ("auto", "timm"):
    found = _timm_by_names(sd)
  if found is None and source in ("auto", "hf"):
    found = _hf_by_names(sd)
  if found is None:
    raise UserError(f"Cannot tell the model family of this checkpoint from "
                    f"{'its config.json or ' if cfg else ''}its tensor names "
                    f"({', '.join(sorted(sd)[:5])}, ...). Supported: {_known()}. Pass "
                    "source='hf' with the snapshot's config.json, or the family's "
                    "converter (vitjax.convert.convert_checkpoint).")
  return found


def _timm_defaults(cfg: Optional[Dict[str, Any]], overrides: Dict[str, Any]):
  """num_heads for a timm hub snapshot whose config.json names a vitjax model."""
  arch = (cfg or {}).get("architecture", "").split(".")[0]
  if not arch or "num_heads" in overrides:
    return overrides
  from vitjax.models import create_model, list_models  # pylint: disable=g-import-not-at-top
  if arch in list_models():
    heads = getattr(create_model(arch), "num_heads", None)
    if heads is not None:
      return dict(overrides, num_heads=heads)
  return overrides


def _input_size(out: Converted, model, cfg: Optional[Dict[str, Any]]) -> int:
  """The checkpoint's input side: the model's image_size, config.json's, the
  ViT position embedding's, else 224."""
  from vitjax.convert.vit import native_image_size  # pylint: disable=g-import-not-at-top
  for size in (getattr(model, "image_size", None), (cfg or {}).get("image_size")):
    if isinstance(size, int) and size > 0:
      return size
  if "patch_size" in out.model_kwargs:
    return native_image_size(out.params, out.model_kwargs) or 224
  return 224


def check_variables(out: Converted, what: str, cfg: Optional[Dict[str, Any]] = None):
  """UserError naming the first tensor whose shape does not fit the converted
  model (e.g. a snapshot whose weights disagree with its config.json)."""
  model = out.create_model()
  size = _input_size(out, model, cfg)
  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  try:
    want = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), x)
  except UserError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f"{what}: the converted weights do not fit the {out.model_name} model "
                    f"its config describes ({type(e).__name__}: {str(e)[:300]}). The "
                    "snapshot's tensors do not match its config.json.") from e
  for collection, tree in want.items():
    got = flatten_params(out.variables.get(collection, {}))
    for k, spec in flatten_params(tree).items():
      if k in got and tuple(np.shape(got[k])) != tuple(spec.shape):
        raise UserError(
            f"{what}: tensor {collection}/{k} has shape {tuple(np.shape(got[k]))}, but the "
            f"{out.model_name} model its config.json describes needs {tuple(spec.shape)}. "
            "The snapshot's tensors do not match its config.json (a config.json from "
            "another model?).")


def load(source_path, source: str = "auto", *, config=None, validate: bool = True,
         **overrides) -> Converted:
  """Published weights of any supported family -> Converted.

  source_path: a Hugging Face snapshot folder (config.json + model.safetensors,
    sharded or not), a .safetensors file (its folder's config.json is read if
    present) or 'hf:<org>/<name>[@revision]' (the offline HF cache).
  source: 'auto' (family from config.json's model_type / architectures, else
    from tensor names), 'hf' or 'timm'.
  config: an HF config (dict, path or PretrainedConfig) instead of config.json.
  validate: check every tensor's shape against the model the kwargs build.
  overrides: the converter's keyword arguments (e.g. num_heads= for timm).
  """
  if source not in SOURCES:
    raise UserError(f"Unknown weight source {source!r}; use one of {', '.join(SOURCES)}.")
  path = resolve_path(source_path)
  cfg = read_json_config(config) if config is not None else _config_of(path)
  sd = load_state_dict(path)
  info = detect(sd, cfg, source)
  what = f"{source_path} ({info.family} from {info.source})"
  try:
    if info.source == "timm":
      out = info(sd, **_timm_defaults(cfg, overrides))
    else:
      out = info(sd, cfg, **overrides)
  except UserError:
    raise
  except (KeyError, ValueError, TypeError, IndexError) as e:
    raise UserError(f"{what}: the converter failed ({type(e).__name__}: {str(e)[:300]}). "
                    "The snapshot's tensors do not match its config.json, or it is a "
                    "variant the converter does not support.") from e
  if validate:
    check_variables(out, what, cfg)
  return out


def load_for_model(checkpoint, model, source: str = "auto", *,
                   what: str = "config.init_from.checkpoint",
                   model_name: Optional[str] = None) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  """(params, other collections) of `checkpoint` for fine-tuning `model`.

  A checkpoint of another family (a model class that does not load into
  `model`'s, see vitjax.models.registry.loads_from) is refused, naming both.
  Fields of the checkpoint's model that differ from `model`'s (other than
  classes, regularisation, resolution and window) are logged as a warning.
  """
  from vitjax.models.registry import loads_from  # pylint: disable=g-import-not-at-top
  out = load(checkpoint, source)
  theirs = out.create_model()
  mine = model_name or type(model).__name__
  if not loads_from(type(model), type(theirs)):
    raise UserError(
        f"{what}={checkpoint!r} holds a {type(theirs).__name__} ({out.model_name}), but "
        f"config.model_name={mine!r} is a {type(model).__name__}: a checkpoint of one "
        f"family does not load into another. Set --config.model_name={out.model_name} "
        "(and config.model to the checkpoint's sizes), or use weights of the "
        f"{type(model).__name__} family.")
  if type(theirs) is type(model):
    differ = sorted(f.name for f in dataclasses.fields(model)
                    if f.name not in ("parent", "name") + _TRAINING_FIELDS
                    and not _same(getattr(model, f.name), getattr(theirs, f.name)))
    if differ:
      log.warning("%s: the model differs from the checkpoint's (%s) in %s; the checkpoint "
                  "has %s.", what, out.model_name, ", ".join(differ),
                  ", ".join(f"{k}={getattr(theirs, k)!r}" for k in differ))
  variables = dict(out.variables)
  params = variables.pop("params")
  return params, variables


def _same(a, b) -> bool:
  try:
    return bool(a == b)
  except Exception:  # pylint: disable=broad-except
    return False


__all__ = ["SOURCES", "TIMM_SIGNATURES", "check_variables", "detect", "is_published", "load",
           "load_for_model", "resolve_path"]
