"""Pretrained weights from PyTorch ecosystems (Hugging Face, timm) <-> vitjax.

`load_pretrained(path_or_state_dict, source='hf'|'timm', **kw)` is the one
entry point (the trainer's `config.init_from` uses it); it returns
`(params, model_kwargs)` for `VisionTransformer(**model_kwargs)`. Only
safetensors files are read (never pickles); see `common.load_state_dict`.
"""

import os
from typing import Any, Dict, Tuple

from vitjax.convert.common import load_state_dict
from vitjax.convert.vit import (check_params, hf_vit_config, hf_vit_to_vitjax,
                                native_image_size, timm_vit_to_vitjax,
                                vitjax_to_hf_vit, vitjax_to_timm_vit)
from vitjax.errors import UserError

SOURCES = ("hf", "timm")


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
  if (source == "hf" and config is None and isinstance(path_or_state_dict, (str, os.PathLike))
      and os.path.isfile(os.path.join(os.fspath(path_or_state_dict), "config.json"))):
    config = os.path.join(os.fspath(path_or_state_dict), "config.json")
  state_dict = load_state_dict(path_or_state_dict)
  if source == "hf":
    from vitjax.convert import mae  # pylint: disable=g-import-not-at-top
    if mae.is_hf_mae(state_dict):  # an MAE: its encoder is a ViT, the decoder is dropped
      state_dict = mae.hf_mae_encoder_state_dict(state_dict)
    params, model_kwargs = hf_vit_to_vitjax(state_dict, config, **kwargs)
  else:
    if config is not None:
      raise UserError("config= is for source='hf'; timm state dicts take "
                      "num_heads=... (and other overrides) as keyword arguments.")
    params, model_kwargs = timm_vit_to_vitjax(state_dict, **kwargs)
  if validate:
    check_params(params, model_kwargs)
  return params, model_kwargs


__all__ = [
    "SOURCES", "check_params", "hf_vit_config", "hf_vit_to_vitjax",
    "load_pretrained", "load_state_dict", "native_image_size",
    "timm_vit_to_vitjax", "vitjax_to_hf_vit", "vitjax_to_timm_vit",
]
