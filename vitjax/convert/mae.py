"""MAE weights: Hugging Face `ViTMAEForPreTraining` -> vitjax, and MAE -> ViT.

`hf_mae_to_vitjax(state_dict, config=None, **overrides)` returns a `Converted`
(variables {'params'}, model name, kwargs) for
`vitjax.models.mae.MaskedAutoencoder`.

Mapping (HF -> vitjax):
  vit.*                                   -> the encoder, exactly as a HF ViT
                                             (vitjax.convert.vit): patch_embed,
                                             cls_token, pos_embedding, block_i,
                                             norm
  decoder.decoder_embed                   -> decoder/embed
  decoder.mask_token                      -> decoder/mask_token
  decoder.decoder_pos_embed               -> decoder/pos_embedding
  decoder.decoder_layers.{i}              -> decoder/block_{i} (q, k, v fused)
  decoder.decoder_norm / decoder_pred     -> decoder/norm / decoder/pred

Heads (num_attention_heads, decoder_num_attention_heads), layer_norm_eps,
mask_ratio and norm_pix_loss come from the HF config (`config=`); without
it pass num_heads= and decoder_num_heads=.

Fine-tuning from an MAE (encoder-only export):
- `mae_encoder_to_vit(params)`: a vitjax MAE's params -> the params and
  kwargs of `VisionTransformer(pool='cls', posemb='learn', num_classes=0)`
  (the decoder dropped). The trainer's `config.init_from` with a vitjax MAE
  workdir needs no conversion: the encoder's names are the ViT's.
- `hf_mae_encoder_state_dict(sd)`: the encoder tensors of a HF MAE state dict;
  `vitjax.convert.load_pretrained(..., source='hf')` uses it, so a HF MAE
  checkpoint (e.g. facebook/vit-mae-base) fine-tunes a ViT through
  `--config.init_from.checkpoint=model.safetensors --config.init_from.source=hf`.
"""

import dataclasses
import re
from typing import Any, Dict, Mapping, Tuple

import numpy as np

from vitjax.convert.common import (ParamWriter, StateDict, cast_params, count_indexed,
                                   flatten_params, linear_to_dense, load_state_dict,
                                   read_json_config, rename_tensors, unflatten_params)
from vitjax.convert.registry import Converted, converted, register_converter
from vitjax.convert.vit import _HF_LAYER_NAMES, hf_vit_to_vitjax
from vitjax.errors import UserError

_WHAT = "Hugging Face ViTMAE"
_DECODER = "decoder."
# Fields the weights fix (an override may not change them).
_STRUCTURAL = ("patch_size", "hidden_size", "depth", "mlp_dim", "decoder_hidden_size",
               "decoder_depth", "decoder_mlp_dim", "qkv_bias")


def is_hf_mae(state_dict: Mapping[str, Any]) -> bool:
  """True for a ViTMAEForPreTraining state dict (it has the pixel decoder)."""
  return any(k.endswith("decoder.decoder_pred.weight") for k in state_dict)


def hf_mae_encoder_state_dict(state_dict: Mapping[str, Any]) -> Dict[str, Any]:
  """The encoder's tensors ('vit.*') of a HF MAE state dict: a HF ViT's layout."""
  return {k: v for k, v in state_dict.items() if not k.startswith(_DECODER)}


def _layer(wr: ParamWriter, p: str, names, t: str):
  """One HF transformer layer `p` -> vitjax EncoderBlock params under `t`."""
  s = wr.s
  wr.layernorm(f"{t}/norm1", p + names["ln1"])
  (qw, qb), (kw, kb), (vw, vb) = ((s.take(f"{p}{names[c]}.weight"),
                                   s.take(f"{p}{names[c]}.bias", optional=True)) for c in "qkv")
  if qw is not None and kw is not None and vw is not None:
    bias = None if qb is None else np.concatenate([qb, kb, vb])
    wr.put(f"{t}/attn/qkv", linear_to_dense(np.concatenate([qw, kw, vw]), bias))
  wr.linear(f"{t}/attn/proj", p + names["o"], bias=None)
  wr.layernorm(f"{t}/norm2", p + names["ln2"])
  wr.linear(f"{t}/mlp/fc1", p + names["fc1"], bias=None)
  wr.linear(f"{t}/mlp/fc2", p + names["fc2"], bias=None)
  return qb is not None


@register_converter(family="mae", source="hf", model_types=("vit_mae",),
                    architectures=("ViTMAEForPreTraining",))
def hf_mae_to_vitjax(state_dict, config=None, *, param_dtype=np.float32, **overrides
                     ) -> Converted:
  """HF ViTMAEForPreTraining state dict (+ config) -> Converted (MaskedAutoencoder)."""
  # transformers 5's save_pretrained names the decoder's layers decoder_encoder.layer.*
  sd = rename_tensors(load_state_dict(state_dict),
                      ((r"^decoder\.decoder_encoder\.layer\.", "decoder.decoder_layers."),))
  cfg = read_json_config(config) or {}
  if not is_hf_mae(sd):
    raise UserError(f"Not a {_WHAT} state dict: no decoder.decoder_pred.weight (a bare "
                    "ViTMAEModel has no decoder: load it as a ViT with source='hf').")
  enc_overrides = {"num_heads": overrides["num_heads"]} if "num_heads" in overrides else {}
  enc = hf_vit_to_vitjax(hf_mae_encoder_state_dict(sd), cfg, param_dtype=None,
                         **enc_overrides)
  enc_kw = enc.model_kwargs

  dec = {k: v for k, v in sd.items() if k.startswith(_DECODER)}
  s = StateDict(dec, _WHAT, _DECODER)
  wr = ParamWriter(s)
  flat = wr.params
  flat.update(flatten_params(enc.params))
  embed_w = wr.linear("decoder/embed", "decoder_embed")
  wr.set("decoder/mask_token", s.take("mask_token"))
  wr.set("decoder/pos_embedding", s.take("decoder_pos_embed"))
  layout = "legacy" if any(".attention.attention." in k for k in dec) else "v5"
  depth = count_indexed(dec, re.escape(_DECODER + "decoder_layers.") + r"(\d+)\.")
  for i in range(depth):
    _layer(wr, f"decoder_layers.{i}.", _HF_LAYER_NAMES[layout], f"decoder/block_{i}")
  wr.layernorm("decoder/norm", "decoder_norm")
  wr.linear("decoder/pred", "decoder_pred")
  s.finish()
  if not depth:
    raise UserError(f"Not a {_WHAT} state dict: no decoder.decoder_layers.<i>.* tensors.")

  kwargs = dict(
      patch_size=enc_kw["patch_size"], hidden_size=enc_kw["hidden_size"],
      depth=enc_kw["depth"], num_heads=enc_kw["num_heads"], mlp_dim=enc_kw["mlp_dim"],
      qkv_bias=enc_kw["qkv_bias"], layer_norm_eps=enc_kw["layer_norm_eps"],
      decoder_hidden_size=embed_w.shape[0], decoder_depth=depth,
      decoder_num_heads=cfg.get("decoder_num_attention_heads"),
      decoder_mlp_dim=flat["decoder/block_0/mlp/fc1/kernel"].shape[1],
      mask_ratio=float(cfg.get("mask_ratio", 0.75)),
      norm_pix_loss=bool(cfg.get("norm_pix_loss", False)))
  from vitjax.models.mae import MaskedAutoencoder  # pylint: disable=g-import-not-at-top
  fields = {f.name for f in dataclasses.fields(MaskedAutoencoder)} - {"parent", "name"}
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise UserError(f"Unknown MaskedAutoencoder argument(s) {', '.join(unknown)}; "
                    f"valid: {', '.join(sorted(fields))}.")
  for k, v in overrides.items():
    if k in _STRUCTURAL and v != kwargs[k]:
      raise UserError(f"{_WHAT}: the checkpoint has {k}={kwargs[k]!r}; it cannot be "
                      f"loaded into a model with {k}={v!r}.")
    kwargs[k] = v
  if kwargs["decoder_num_heads"] is None:
    raise UserError(f"{_WHAT}: the decoder's number of heads cannot be read from the "
                    "weights; pass the config.json (config=) or decoder_num_heads=... "
                    "(16 in the paper's models).")
  return converted({"params": cast_params(unflatten_params(flat), param_dtype)},
                   MaskedAutoencoder, kwargs)


def mae_encoder_to_vit(params, model_kwargs: Mapping[str, Any] = None
                       ) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  """A vitjax MAE's params -> (params, kwargs) of the ViT its encoder is.

  The result is `VisionTransformer(**kwargs)` with pool='cls',
  posemb='learn' (starting from MAE's sin-cos values) and no head; add a head
  (num_classes=...) and fine-tune. `model_kwargs`: the MAE's kwargs (e.g.
  from `hf_mae_to_vitjax`) for the widths and heads.
  """
  flat = {k: np.asarray(v) for k, v in flatten_params(params).items()}
  if flat and all(k.startswith("params/") for k in flat):
    flat = {k[len("params/"):]: v for k, v in flat.items()}
  if "pos_embedding" not in flat or "patch_embed/proj/kernel" not in flat:
    raise UserError("Not vitjax MAE params: no patch_embed/proj or pos_embedding.")
  vit = {k: v for k, v in flat.items() if not k.startswith("decoder/")}
  kw = dict(model_kwargs or {})
  vit_kwargs = dict(num_classes=0, pool="cls", posemb="learn", fc_norm=False)
  for k in ("patch_size", "hidden_size", "depth", "num_heads", "mlp_dim", "qkv_bias",
            "layer_norm_eps", "drop_path_rate", "dtype"):
    if k in kw:
      vit_kwargs[k] = kw[k]
  vit_kwargs.setdefault("patch_size", vit["patch_embed/proj/kernel"].shape[0])
  vit_kwargs.setdefault("hidden_size", vit["cls_token"].shape[-1])
  vit_kwargs.setdefault("depth", count_indexed(vit, r"block_(\d+)/"))
  vit_kwargs.setdefault("mlp_dim", vit["block_0/mlp/fc1/kernel"].shape[1])
  return unflatten_params(vit), vit_kwargs
