"""Conditional DETR weights from Hugging Face transformers -> vitjax.

`hf_conditional_detr_to_vitjax(src, config=None, **overrides)` reads a
`ConditionalDetrForObjectDetection` state dict (safetensors file, HF snapshot
folder or in-memory dict; never a pickle) with an HF ResNet backbone
(`use_timm_backbone=False`) and returns a `Converted` (variables {'params',
'batch_stats'}, model name, kwargs) for
`vitjax.models.conditional_detr.ConditionalDETR`.

Widths, depths, queries and classes come from the weights; the number of
attention heads from the config (default 8, the paper's). Learned position
embeddings, other activations, different encoder / decoder head counts and
dilated (DC5) backbones are refused. HF's `auxiliary_loss=True` feeds the
normalised intermediate outputs on to the next decoder layer; vitjax (like the
paper) normalises only the copies used for predictions, so the final outputs
agree with HF's `auxiliary_loss=False` forward pass.
"""

from typing import Any, Dict

import numpy as np

from vitjax.convert.cnn import hf_resnet_to_vitjax
from vitjax.convert.common import (ParamWriter, StateDict, conv_to_flax, count_indexed,
                                   flatten_params, load_state_dict, read_json_config,
                                   rename_tensors, unflatten_params)
from vitjax.convert.deformable_detr import box_head, split_resnet_backbone
from vitjax.convert.detr import HF_V4_NAMES
from vitjax.convert.registry import Converted, converted, register_converter
from vitjax.errors import UserError

WHAT = "Hugging Face ConditionalDetrForObjectDetection"


def _check_config(cfg):
  if cfg.get("activation_function", "relu") != "relu":
    raise UserError(f"{WHAT}: activation_function={cfg['activation_function']!r} is not "
                    "supported (vitjax uses relu).")
  if cfg.get("position_embedding_type", "sine") != "sine":
    raise UserError(f"{WHAT}: position_embedding_type={cfg['position_embedding_type']!r} "
                    "is not supported (sine only).")
  if cfg.get("encoder_attention_heads", 8) != cfg.get("decoder_attention_heads", 8):
    raise UserError(f"{WHAT}: encoder_attention_heads != decoder_attention_heads is not "
                    "supported (vitjax uses one num_heads).")
  if cfg.get("dilation"):
    raise UserError(f"{WHAT}: dilation=True (DC5 backbone) is not supported.")


# The Hub's (transformers 4) names: DETR's, plus the decoder's flat sa_* / ca_*
# projections (self / cross attention).
_HF_V4_NAMES = HF_V4_NAMES + (
    (r"(layers\.\d+)\.sa_([qk])(content|pos)_proj\.", r"\1.self_attn.\2_\3_proj."),
    (r"(layers\.\d+)\.ca_([qk])(content|pos|pos_sine)_proj\.", r"\1.encoder_attn.\2_\3_proj."),
    (r"(layers\.\d+)\.sa_v_proj\.", r"\1.self_attn.v_proj."),
    (r"(layers\.\d+)\.ca_v_proj\.", r"\1.encoder_attn.v_proj."),
)

@register_converter(family="conditional_detr", source="hf", model_types=("conditional_detr",),
                    architectures=("ConditionalDetrForObjectDetection",))
def hf_conditional_detr_to_vitjax(src, config=None, **overrides) -> Converted:
  """HF ConditionalDetrForObjectDetection -> Converted (ConditionalDETR)."""
  cfg = read_json_config(config) or {}
  _check_config(cfg)
  bb_sd, sd = split_resnet_backbone(rename_tensors(load_state_dict(src), _HF_V4_NAMES), WHAT)
  backbone = hf_resnet_to_vitjax(bb_sd)
  bb_vars, bb_kwargs = backbone.variables, dict(backbone.model_kwargs)
  bb_kwargs.pop("num_classes")
  s = StateDict(sd, WHAT)
  p = ParamWriter(s, np.float32)

  p.put("input_projection", conv_to_flax(s.take("model.input_projection.weight"),
                                         s.take("model.input_projection.bias")))
  q = s.take("model.query_position_embeddings.weight")
  s.check_missing()
  p.set("query_embed", q)
  n_enc = count_indexed(sd, r"model\.encoder\.layers\.(\d+)\.")
  n_dec = count_indexed(sd, r"model\.decoder\.layers\.(\d+)\.")
  for i in range(n_enc):
    t = f"model.encoder.layers.{i}."
    for m in ("q_proj", "k_proj", "v_proj", "o_proj"):
      p.linear(f"encoder_{i}/self_attn/{m}", t + "self_attn." + m)
    p.layernorm(f"encoder_{i}/self_attn_layer_norm", t + "self_attn_layer_norm")
    p.layernorm(f"encoder_{i}/final_layer_norm", t + "final_layer_norm")
    p.linear(f"encoder_{i}/mlp/fc1", t + "mlp.fc1")
    p.linear(f"encoder_{i}/mlp/fc2", t + "mlp.fc2")
  for i in range(n_dec):
    t = f"model.decoder.layers.{i}."
    for m in ("q_content_proj", "q_pos_proj", "k_content_proj", "k_pos_proj", "v_proj", "o_proj"):
      p.linear(f"decoder_{i}/self_attn/{m}", t + "self_attn." + m)
    cross = ["q_content_proj", "k_content_proj", "k_pos_proj", "v_proj", "q_pos_sine_proj",
             "o_proj"] + (["q_pos_proj"] if i == 0 else [])
    for m in cross:
      p.linear(f"decoder_{i}/encoder_attn/{m}", t + "encoder_attn." + m)
    for ln in ("self_attn_layer_norm", "encoder_attn_layer_norm", "final_layer_norm"):
      p.layernorm(f"decoder_{i}/{ln}", t + ln)
    p.linear(f"decoder_{i}/mlp/fc1", t + "mlp.fc1")
    p.linear(f"decoder_{i}/mlp/fc2", t + "mlp.fc2")
  p.layernorm("decoder_norm", "model.decoder.layernorm")
  for head in ("query_scale", "ref_point_head"):  # 2-layer MLPs (vitjax Mlp: fc1, fc2)
    p.linear(f"{head}/fc1", f"model.decoder.{head}.layers.0")
    p.linear(f"{head}/fc2", f"model.decoder.{head}.layers.1")
  p.linear("class_embed", "class_labels_classifier")
  if box_head(p, "bbox_embed", "bbox_predictor") != 3:
    raise UserError(f"{WHAT}: the box head is not a 3-layer MLP.")
  s.finish()

  d = q.shape[1]
  kwargs: Dict[str, Any] = dict(
      num_classes=p.params["class_embed/bias"].shape[0], backbone=bb_kwargs, hidden_dim=int(d),
      num_heads=int(cfg.get("encoder_attention_heads", 8)), encoder_layers=n_enc,
      decoder_layers=n_dec, ffn_dim=p.params["decoder_0/mlp/fc1/bias"].shape[0],
      num_queries=q.shape[0])
  for k, v in overrides.items():
    if k in kwargs and k != "num_classes" and kwargs[k] != v:
      raise UserError(f"{WHAT}: override {k}={v!r} contradicts the checkpoint ({k}={kwargs[k]!r}).")
    kwargs[k] = v
  params = unflatten_params(p.params)
  if kwargs["num_classes"] != p.params["class_embed/bias"].shape[0]:
    del params["class_embed"]
  params["backbone"] = unflatten_params(flatten_params(bb_vars["params"]))
  from vitjax.models.conditional_detr import ConditionalDETR  # pylint: disable=g-import-not-at-top
  return converted({"params": params, "batch_stats": {"backbone": bb_vars["batch_stats"]}},
                   ConditionalDETR, kwargs)
