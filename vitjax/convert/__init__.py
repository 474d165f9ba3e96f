"""Pretrained weights from PyTorch ecosystems (Hugging Face, timm) <-> vitjax.

Every family's converter registers itself (vitjax.convert.registry):
`get_converter(family, source)` finds it, `list_converters()` lists them, and
each returns a `Converted` (variables, registered model name, model kwargs).
`convert_checkpoint(path, family, source)` reads a checkpoint and runs one.
`export_hf(workdir_or_converted, out_dir)` writes the way back: a Hugging
Face snapshot (vitjax/convert/export.py).

`load(source_path, source='auto'|'hf'|'timm', **overrides)` imports any
supported family from a snapshot folder, a .safetensors file or
`hf:<org>/<name>` (the offline Hugging Face cache), recognising the family
(vitjax.convert.pretrained); the trainer's `config.init_from` uses it.

`load_pretrained(path_or_state_dict, source='hf'|'timm', **kw)` is the ViT /
DeiT / MAE-encoder entry point of the trainer's `config.init_from`; it returns
`(params, model_kwargs)` for `VisionTransformer(**model_kwargs)`. Only
safetensors files are read (never pickles); see `common.load_state_dict`.
"""

import os
from typing import Any, Dict, Tuple

from vitjax.convert.common import load_state_dict
from vitjax.convert.pretrained import load, load_for_model
from vitjax.convert.export import export_hf
from vitjax.convert.registry import (Converted, ConverterInfo, get_converter, get_exporter,
                                     list_converters, list_exporters, register_converter,
                                     register_exporter)
from vitjax.convert.vit import (check_params, hf_vit_config, hf_vit_to_vitjax,
                                native_image_size, timm_vit_to_vitjax,
                                vitjax_to_hf_vit, vitjax_to_timm_vit)
from vitjax.errors import UserError

SOURCES = ("hf", "timm")


def _hf_config_path(path_or_state_dict):
  """The config.json next to a Hugging Face snapshot folder's weights, or None."""
  if isinstance(path_or_state_dict, (str, os.PathLike)):
    path = os.path.join(os.fspath(path_or_state_dict), "config.json")
    if os.path.isfile(path):
      return path
  return None


def convert_checkpoint(path_or_state_dict, family: str, source: str = "hf", *,
                       config=None, **overrides) -> Converted:
  """Reads a checkpoint and converts it with the registered (family, source) converter.

  path_or_state_dict: as for `load_pretrained`. config: HF only (read from a
  snapshot folder's config.json when not given). overrides: the converter's
  keyword arguments (see its module).
  """
  if source not in SOURCES:
    raise UserError(f"Unknown weight source {source!r}; use one of {', '.join(SOURCES)}.")
  convert = get_converter(family, source)
  if source == "timm":
    if config is not None:
      raise UserError("config= is for source='hf'; timm converters take their "
                      "settings as keyword arguments.")
    return convert(load_state_dict(path_or_state_dict), **overrides)
  config = config if config is not None else _hf_config_path(path_or_state_dict)
  return convert(load_state_dict(path_or_state_dict), config, **overrides)


def load_pretrained(path_or_state_dict, source: str = "hf", *, config=None,
                    validate: bool = True, **kwargs
                    ) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  """Loads ViT / DeiT weights into vitjax: returns (params, model_kwargs).

  path_or_state_dict: a .safetensors file, a Hugging Face snapshot folder
    (model.safetensors or sharded, plus config.json, read automatically for
    source='hf'), or a loaded state dict (numpy arrays or torch tensors).
  source: 'hf' (transformers ViT*/DeiT* classes) or 'timm'.
  config: for 'hf', the config.json (dict, path or PretrainedConfig); it
    gives num_heads and layer_norm_eps.
  validate: check the result against VisionTransformer's parameter shapes.
  kwargs: VisionTransformer overrides (num_heads=... is required for timm and
    for HF without a config); a new num_classes leaves the classifier out of
    `params` for the caller to initialise; representation_size=None drops a
    pre-logits layer; see vitjax.convert.vit. Also global_pool= (timm) and
    param_dtype= (default float32; None keeps the checkpoint's dtypes).
  """
  if source not in SOURCES:
    raise UserError(f"Unknown weight source {source!r}; use one of {', '.join(SOURCES)}.")
  if source == "hf" and config is None:
    config = _hf_config_path(path_or_state_dict)
  state_dict = load_state_dict(path_or_state_dict)
  if source == "hf":
    from vitjax.convert import mae  # pylint: disable=g-import-not-at-top
    if mae.is_hf_mae(state_dict):  # an MAE: its encoder is a ViT, the decoder is dropped
      state_dict = mae.hf_mae_encoder_state_dict(state_dict)
    out = hf_vit_to_vitjax(state_dict, config, **kwargs)
  else:
    if config is not None:
      raise UserError("config= is for source='hf'; timm state dicts take "
                      "num_heads=... (and other overrides) as keyword arguments.")
    out = timm_vit_to_vitjax(state_dict, **kwargs)
  params, model_kwargs = out.params, out.model_kwargs
  if validate:
    check_params(params, model_kwargs)
  return params, model_kwargs


__all__ = [
    "SOURCES", "Converted", "ConverterInfo", "check_params", "convert_checkpoint",
    "export_hf", "get_converter", "get_exporter", "hf_vit_config", "hf_vit_to_vitjax",
    "list_converters", "list_exporters", "load", "load_for_model", "load_pretrained",
    "load_state_dict", "native_image_size", "register_converter", "register_exporter",
    "timm_vit_to_vitjax", "vitjax_to_hf_vit", "vitjax_to_timm_vit",
]
