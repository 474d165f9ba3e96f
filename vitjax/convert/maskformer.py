"""MaskFormer weights from Hugging Face transformers -> vitjax.

`hf_maskformer_to_vitjax(state_dict, config=None, **overrides)` converts a
`MaskFormerForInstanceSegmentation` state dict with a Swin backbone
(MaskFormer-Swin) into a `Converted` (variables {'params'}, model name,
kwargs) for `vitjax.models.maskformer.MaskFormer`.

Mapping (HF -> vitjax):
  model.pixel_level_module.encoder.model.*     -> backbone (vitjax.convert.swin)
  ...encoder.hidden_states_norms.{i}           -> stage_norm_{i}
  ...decoder.fpn.stem.0 / .1                   -> pixel_decoder/stem/conv, norm (GroupNorm)
  ...decoder.fpn.layers.{i}.proj.0/.1          -> pixel_decoder/layer_{i}_proj/conv, norm
  ...decoder.fpn.layers.{i}.block.0/.1         -> pixel_decoder/layer_{i}_block/conv, norm
  ...decoder.mask_projection                   -> pixel_decoder/mask_projection
  model.transformer_module.queries_embedder    -> query_embed
  model.transformer_module.input_projection    -> input_projection
  ...decoder.layers.{i}.*                      -> decoder_layer_{i}/* (same names;
                                                  vitjax.models.detr.DecoderLayer)
  ...decoder.layernorm                         -> decoder_norm
  class_predictor                              -> class_head
  mask_embedder.{i}.0                          -> mask_embed_{i}
The decoder's head count is not in the weights: it comes from the config
(decoder_config.decoder_attention_heads) or num_heads=. Not supported
(UserError): other backbones (ResNet / timm) than Swin.
"""

import re
from typing import Any, Dict

import numpy as np

from vitjax.convert.common import (ParamWriter, StateDict, cast_params, count_indexed,
                                   flatten_params, load_state_dict, rename_tensors,
                                   unflatten_params)
from vitjax.convert.detr import HF_V4_NAMES
from vitjax.convert.registry import Converted, converted, register_converter
from vitjax.convert.swin import hf_swin_to_vitjax
from vitjax.errors import UserError

_ENC = "model.pixel_level_module.encoder."
_PIX = "model.pixel_level_module.decoder."
_TR = "model.transformer_module."


def _config_dict(config) -> Dict[str, Any]:
  if config is None:
    return {}
  if hasattr(config, "to_dict"):
    return config.to_dict()
  return dict(config)


@register_converter(family="maskformer", source="hf", model_types=("maskformer",),
                    architectures=("MaskFormerForInstanceSegmentation",))
def hf_maskformer_to_vitjax(state_dict, config=None, *, param_dtype=np.float32, **overrides
                            ) -> Converted:
  """HF MaskFormer (Swin backbone) state dict (+ config) -> Converted (MaskFormer)."""
  sd = rename_tensors(load_state_dict(state_dict), HF_V4_NAMES)  # the Hub's names too
  cfg = _config_dict(config)
  what = "HF MaskFormer"
  if _TR + "queries_embedder.weight" not in sd:
    raise UserError(f"Not a {what} state dict: no {_TR}queries_embedder.weight.")
  bb_prefix = _ENC + "model."
  if bb_prefix + "embeddings.patch_embeddings.projection.weight" not in sd:
    raise UserError(f"{what}: only Swin backbones are supported (no "
                    f"{bb_prefix}embeddings.patch_embeddings.projection.weight).")
  backbone_sd = {k[len(bb_prefix):]: v for k, v in sd.items() if k.startswith(bb_prefix)}
  backbone = hf_swin_to_vitjax(backbone_sd)
  bb_kwargs = dict(backbone.model_kwargs)
  rest = {k: v for k, v in sd.items() if not k.startswith(bb_prefix)}
  s = StateDict(rest, what)
  wr = ParamWriter(s)
  flat = wr.params
  flat.update({f"backbone/{k}": v for k, v in flatten_params(backbone.params).items()})

  num_stages = len(bb_kwargs["depths"])
  for i in range(num_stages):
    wr.layernorm(f"stage_norm_{i}", _ENC + f"hidden_states_norms.{i}")

  def conv_gn(name, hf):
    wr.conv(f"pixel_decoder/{name}/conv", hf + ".0", bias=False)
    wr.layernorm(f"pixel_decoder/{name}/norm", hf + ".1")

  conv_gn("stem", _PIX + "fpn.stem")
  for i in range(count_indexed(rest, re.escape(_PIX + "fpn.layers.") + r"(\d+)\.")):
    conv_gn(f"layer_{i}_proj", _PIX + f"fpn.layers.{i}.proj")
    conv_gn(f"layer_{i}_block", _PIX + f"fpn.layers.{i}.block")
  w = wr.conv("pixel_decoder/mask_projection", _PIX + "mask_projection")
  fpn_dim, mask_dim = int(w.shape[1]), int(w.shape[0])

  queries = s.take(_TR + "queries_embedder.weight")
  wr.set("query_embed", queries)
  if s.has(_TR + "input_projection.weight"):
    wr.conv("input_projection", _TR + "input_projection")
  layers = count_indexed(rest, re.escape(_TR + "decoder.layers.") + r"(\d+)\.")
  ffn_dim = None
  for i in range(layers):
    p, t = _TR + f"decoder.layers.{i}.", f"decoder_layer_{i}"
    for name in ("self_attn", "encoder_attn"):
      for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
        wr.linear(f"{t}/{name}/{proj}", p + f"{name}.{proj}")
    for name in ("self_attn_layer_norm", "encoder_attn_layer_norm", "final_layer_norm"):
      wr.layernorm(f"{t}/{name}", p + name)
    w1 = wr.linear(f"{t}/mlp/fc1", p + "mlp.fc1")
    wr.linear(f"{t}/mlp/fc2", p + "mlp.fc2")
    ffn_dim = int(w1.shape[0])
  wr.layernorm("decoder_norm", _TR + "decoder.layernorm")
  wr.linear("class_head", "class_predictor")
  for i in range(3):
    wr.linear(f"mask_embed_{i}", f"mask_embedder.{i}.0")
  s.finish(ignore=[r"^criterion\.", r"\.num_batches_tracked$"])

  dec = cfg.get("decoder_config") or {}
  heads = overrides.pop("num_heads", dec.get("decoder_attention_heads"))
  if heads is None:
    raise UserError(f"{what}: the decoder's head count is not stored in the weights; pass "
                    "the model's config (config=...) or num_heads=...")
  bb_kwargs.pop("num_classes", None)
  kwargs = dict(
      num_classes=int(flat["class_head/bias"].shape[0]) - 1,
      backbone="swin_tiny_patch4_window7_224", backbone_kwargs=bb_kwargs, stage_norms=True,
      num_queries=int(queries.shape[0]), hidden_dim=int(queries.shape[1]), fpn_dim=fpn_dim,
      mask_dim=mask_dim, decoder_layers=int(layers), num_heads=int(heads),
      ffn_dim=int(ffn_dim), dropout=0.0)
  kwargs.update(overrides)
  from vitjax.models.maskformer import MaskFormer  # pylint: disable=g-import-not-at-top
  return converted({"params": cast_params(unflatten_params(flat), param_dtype)}, MaskFormer,
                   kwargs)


__all__ = ["hf_maskformer_to_vitjax"]
