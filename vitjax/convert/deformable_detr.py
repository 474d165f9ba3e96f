"""Deformable DETR weights from Hugging Face transformers -> vitjax.

`hf_deformable_detr_to_vitjax(src, config=None, **overrides)` reads a
`DeformableDetrForObjectDetection` state dict (a .safetensors file, an HF
snapshot folder or an in-memory dict; never a pickle) whose backbone is an HF
ResNet (`use_timm_backbone=False`), and returns a `Converted` (variables
{'params', 'batch_stats'}, model name, kwargs) for
`vitjax.models.deformable_detr.DeformableDETR`.

Read from the weights: widths, depths, levels, queries, classes, the backbone
layout, with_box_refine (the decoder's own box heads), two_stage (the
encoder-output projection) and whether the per-layer heads are one shared head
(all equal: the paper's layout without refinement). Read from the config (a
dict, a config.json path or folder, or a PretrainedConfig): the number of
attention heads and sampling points (the weights only fix their product);
without a config the defaults of the paper (8 heads) are assumed. Variants
vitjax does not implement (timm backbones, learned position embeddings, other
activations, different encoder / decoder head counts) are refused.

The backbone's frozen BatchNorm (weight, bias, running mean / var) becomes the
ResNet's BatchNorm params and 'batch_stats' (vitjax.convert.cnn).
"""

import re
from typing import Any, Dict

import numpy as np

from vitjax.convert.cnn import hf_resnet_to_vitjax
from vitjax.convert.common import (ParamWriter, StateDict, conv_to_flax, count_indexed,
                                   flatten_params, load_state_dict, read_json_config,
                                   rename_tensors, unflatten_params)
from vitjax.convert.detr import HF_V4_NAMES
from vitjax.convert.registry import Converted, converted, register_converter
from vitjax.errors import UserError

WHAT = "Hugging Face DeformableDetrForObjectDetection"
_BACKBONE = "model.backbone.model."


def box_head(p: ParamWriter, name: str, torch_name: str) -> int:
  """An HF box MLP `torch_name.layers.{j}` -> `name/layers_{j}`; returns its depth."""
  n = count_indexed(p.s.sd, re.escape(torch_name) + r"\.layers\.(\d+)\.")
  for j in range(n):
    p.linear(f"{name}/layers_{j}", f"{torch_name}.layers.{j}")
  return n


def split_resnet_backbone(sd, what: str = WHAT):
  """(HF ResNet backbone tensors with the prefix removed, the other tensors)."""
  if _BACKBONE + "conv1.weight" in sd:
    raise UserError(f"{what}: a timm backbone (use_timm_backbone=True) is not supported; "
                    "use an HF ResNet backbone (use_timm_backbone=False).")
  bb = {k[len(_BACKBONE):]: v for k, v in sd.items() if k.startswith(_BACKBONE)}
  if not bb:
    raise UserError(f"Not a {what} state dict: no '{_BACKBONE}*' backbone tensors. It has: "
                    f"{', '.join(sorted(sd)[:8])} ...")
  return bb, {k: v for k, v in sd.items() if not k.startswith(_BACKBONE)}


def _check_config(cfg):
  if not cfg:
    return
  if cfg.get("activation_function", "relu") != "relu":
    raise UserError(f"{WHAT}: activation_function={cfg['activation_function']!r} is not "
                    "supported (vitjax uses relu).")
  if cfg.get("position_embedding_type", "sine") != "sine":
    raise UserError(f"{WHAT}: position_embedding_type="
                    f"{cfg['position_embedding_type']!r} is not supported (sine only).")
  if cfg.get("encoder_attention_heads", 8) != cfg.get("decoder_attention_heads", 8):
    raise UserError(f"{WHAT}: encoder_attention_heads != decoder_attention_heads is not "
                    "supported (vitjax uses one num_heads).")
  if cfg.get("dilation"):
    raise UserError(f"{WHAT}: dilation=True (DC5 backbone) is not supported.")


@register_converter(family="deformable_detr", source="hf", model_types=("deformable_detr",),
                    architectures=("DeformableDetrForObjectDetection",))
def hf_deformable_detr_to_vitjax(src, config=None, **overrides) -> Converted:
  """HF DeformableDetrForObjectDetection -> Converted (DeformableDETR)."""
  cfg = read_json_config(config) or {}
  _check_config(cfg)
  sd = rename_tensors(load_state_dict(src), HF_V4_NAMES)
  bb_sd, sd = split_resnet_backbone(sd)
  backbone = hf_resnet_to_vitjax(bb_sd)
  bb_vars, bb_kwargs = backbone.variables, dict(backbone.model_kwargs)
  bb_kwargs.pop("num_classes")
  s = StateDict(sd, WHAT)
  p = ParamWriter(s, np.float32)

  level_embed = s.take("model.level_embed")
  if level_embed is None:
    s.check_missing()
  num_levels, d = level_embed.shape
  p.set("level_embed", level_embed)
  n_in = count_indexed(sd, r"model\.input_proj\.(\d+)\.")
  for i in range(n_in):
    p.put(f"input_proj_{i}_conv", conv_to_flax(s.take(f"model.input_proj.{i}.0.weight"),
                                               s.take(f"model.input_proj.{i}.0.bias")))
    p.layernorm(f"input_proj_{i}_norm", f"model.input_proj.{i}.1")
  if n_in != num_levels:
    raise UserError(f"{WHAT}: {n_in} input projections for {num_levels} levels "
                    "(num_feature_levels=1 layouts are not supported).")

  n_enc = count_indexed(sd, r"model\.encoder\.layers\.(\d+)\.")
  n_dec = count_indexed(sd, r"model\.decoder\.layers\.(\d+)\.")
  msda = ("sampling_offsets", "attention_weights", "value_proj", "output_proj")
  for i in range(n_enc):
    t = f"model.encoder.layers.{i}."
    for m in msda:
      p.linear(f"encoder_{i}/self_attn/{m}", t + "self_attn." + m)
    p.layernorm(f"encoder_{i}/self_attn_layer_norm", t + "self_attn_layer_norm")
    p.linear(f"encoder_{i}/mlp/fc1", t + "mlp.fc1")
    p.linear(f"encoder_{i}/mlp/fc2", t + "mlp.fc2")
    p.layernorm(f"encoder_{i}/final_layer_norm", t + "final_layer_norm")
  for i in range(n_dec):
    t = f"model.decoder.layers.{i}."
    for m in ("q_proj", "k_proj", "v_proj", "o_proj"):
      p.linear(f"decoder_{i}/self_attn/{m}", t + "self_attn." + m)
    for m in msda:
      p.linear(f"decoder_{i}/encoder_attn/{m}", t + "encoder_attn." + m)
    for ln in ("self_attn_layer_norm", "encoder_attn_layer_norm", "final_layer_norm"):
      p.layernorm(f"decoder_{i}/{ln}", t + ln)
    p.linear(f"decoder_{i}/mlp/fc1", t + "mlp.fc1")
    p.linear(f"decoder_{i}/mlp/fc2", t + "mlp.fc2")

  box_refine = s.has("model.decoder.bbox_embed.0.layers.0.weight")
  two_stage = s.has("model.enc_output.weight")
  if not box_refine:  # tied prediction heads are saved once (safetensors drops shared tensors)
    for i in range(1, n_dec + (1 if two_stage else 0)):
      for k in [k for k in s.sd if k.startswith(("class_embed.0.", "bbox_embed.0."))]:
        copy = k.replace(".0.", f".{i}.", 1)
        sd.setdefault(copy, s.sd[k])
        s.sd.setdefault(copy, s.sd[k])
  n_pred = count_indexed(sd, r"class_embed\.(\d+)\.")
  if n_pred != n_dec + (1 if two_stage else 0):
    raise UserError(f"{WHAT}: {n_pred} class heads for {n_dec} decoder layers "
                    f"(two_stage={two_stage}).")
  heads = [(f"class_embed.{i}", f"bbox_embed.{i}") for i in range(n_pred)]
  shared = not box_refine and all(
      np.array_equal(sd[f"{c}.weight"], sd["class_embed.0.weight"]) and
      np.array_equal(sd[f"{b}.layers.0.weight"], sd["bbox_embed.0.layers.0.weight"])
      for c, b in heads)
  for i, (c, b) in enumerate(heads[:1] if shared else heads):
    p.linear(f"class_embed_{i}", c)
    box_head(p, f"bbox_embed_{i}", b)
  if shared:  # the copies are the same tensors
    for c, b in heads[1:]:
      for k in [k for k in sd if k.startswith(c + ".") or k.startswith(b + ".")]:
        s.take(k)
  # The decoder's own references to the (tied) heads.
  for k in [k for k in sd if k.startswith(("model.decoder.bbox_embed.", "model.decoder.class_embed."))]:
    twin = k[len("model.decoder."):]
    if twin not in sd or not np.array_equal(sd[k], sd[twin]):
      raise UserError(f"{WHAT}: {k} differs from {twin}; vitjax ties the decoder's "
                      "refinement heads to the prediction heads (as HF does).")
    s.take(k)

  if two_stage:
    p.linear("enc_output", "model.enc_output")
    p.layernorm("enc_output_norm", "model.enc_output_norm")
    p.linear("pos_trans", "model.pos_trans")
    p.layernorm("pos_trans_norm", "model.pos_trans_norm")
    num_queries = int(cfg.get("two_stage_num_proposals", cfg.get("num_queries", 300)))
  else:
    q = s.take("model.query_position_embeddings.weight")
    p.linear("reference_points", "model.reference_points")
    if q is not None:
      p.set("query_embed", q)
      num_queries = q.shape[0]
  s.finish()

  heads_n = int(cfg.get("encoder_attention_heads", 8))
  enc_k = int(cfg.get("encoder_n_points", 0)) or (
      p.params["encoder_0/self_attn/attention_weights/bias"].shape[0] // (heads_n * num_levels)
      if n_enc else 4)
  dec_k = int(cfg.get("decoder_n_points", 0)) or (
      p.params["decoder_0/encoder_attn/attention_weights/bias"].shape[0] // (heads_n * num_levels))
  if p.params["decoder_0/encoder_attn/attention_weights/bias"].shape[0] != heads_n * num_levels * dec_k:
    raise UserError(f"{WHAT}: the attention weights do not fit {heads_n} heads x "
                    f"{num_levels} levels x {dec_k} points; pass the model's config.")
  kwargs: Dict[str, Any] = dict(
      num_classes=p.params["class_embed_0/bias"].shape[0], backbone=bb_kwargs,
      hidden_dim=int(d), num_heads=heads_n, encoder_layers=n_enc, decoder_layers=n_dec,
      ffn_dim=p.params["decoder_0/mlp/fc1/bias"].shape[0], num_queries=int(num_queries),
      num_feature_levels=int(num_levels), encoder_points=int(enc_k), decoder_points=int(dec_k),
      with_box_refine=box_refine, two_stage=two_stage, share_heads=shared)
  for k, v in overrides.items():
    if k in kwargs and k not in ("num_classes",) and kwargs[k] != v:
      raise UserError(f"{WHAT}: override {k}={v!r} contradicts the checkpoint ({k}={kwargs[k]!r}).")
    kwargs[k] = v
  flat = flatten_params(bb_vars["params"])
  params = unflatten_params(p.params)
  params["backbone"] = unflatten_params(flat)
  variables = {"params": params, "batch_stats": {"backbone": bb_vars["batch_stats"]}}
  if kwargs["num_classes"] != p.params["class_embed_0/bias"].shape[0]:
    for k in [k for k in params if k.startswith("class_embed_")]:
      del params[k]
  from vitjax.models.deformable_detr import DeformableDETR  # pylint: disable=g-import-not-at-top
  return converted(variables, DeformableDETR, kwargs)
