"""DETR weights from Hugging Face transformers -> vitjax.

`hf_detr_to_vitjax(src, config=None, **overrides)` reads a
`DetrForObjectDetection` state dict (a .safetensors file, an HF snapshot
folder or an in-memory dict; never a pickle) whose backbone is an HF ResNet
(`use_timm_backbone=False`) and returns a `Converted` (variables {'params',
'batch_stats'}, model name, kwargs) for `vitjax.models.detr.DETR`.

Read from the weights: the backbone layout, d_model, layer counts, FFN width,
queries and classes. From the config (optional; defaults: the paper's 8
heads): the number of attention heads. Unsupported variants (timm backbones,
learned position embeddings, other activations, DC5 dilation, different
encoder / decoder head counts) are refused. The backbone's frozen BatchNorm
becomes the ResNet's BatchNorm params and 'batch_stats' (vitjax.convert.cnn).
"""

import numpy as np

from vitjax.convert.cnn import hf_resnet_to_vitjax
from vitjax.convert.common import (ParamWriter, StateDict, count_indexed, load_state_dict,
                                   read_json_config, rename_tensors)
from vitjax.convert.registry import Converted, converted, register_converter
from vitjax.errors import UserError

WHAT = "Hugging Face DetrForObjectDetection"
_BACKBONE = "model.backbone.model."

# The Hub's (transformers 4) tensor names -> the ones read here (transformers 5);
# shared by the DETR-style converters. A state dict in the new names is unchanged.
HF_V4_NAMES = (
    (r"^model\.backbone\.conv_encoder\.model\.", "model.backbone.model."),
    (r"(layers\.\d+\.(?:self_attn|encoder_attn))\.out_proj\.", r"\1.o_proj."),
    (r"(layers\.\d+)\.fc([12])\.", r"\1.mlp.fc\2."),
)


def _check_config(cfg):
  if cfg.get("use_timm_backbone"):
    raise UserError(f"{WHAT}: timm backbones (use_timm_backbone=True) are not supported; "
                    "use an HF ResNet backbone.")
  for key, want in (("activation_function", "relu"), ("position_embedding_type", "sine")):
    if cfg.get(key, want) != want:
      raise UserError(f"{WHAT}: {key}={cfg[key]!r} is not supported (vitjax: {want!r}).")
  if cfg.get("encoder_attention_heads", 8) != cfg.get("decoder_attention_heads", 8):
    raise UserError(f"{WHAT}: encoder_attention_heads != decoder_attention_heads is not "
                    "supported (one num_heads).")
  if cfg.get("dilation"):
    raise UserError(f"{WHAT}: dilation=True (DC5) is not supported.")


@register_converter(family="detr", source="hf", model_types=("detr",),
                    architectures=("DetrForObjectDetection",))
def hf_detr_to_vitjax(src, config=None, **overrides) -> Converted:
  """HF DetrForObjectDetection -> Converted (DETR)."""
  cfg = read_json_config(config) or {}
  _check_config(cfg)
  sd = rename_tensors(load_state_dict(src), HF_V4_NAMES)
  if _BACKBONE + "conv1.weight" in sd:
    raise UserError(f"{WHAT}: a timm backbone is not supported; use an HF ResNet backbone.")
  bb = {k[len(_BACKBONE):]: v for k, v in sd.items() if k.startswith(_BACKBONE)}
  if not bb:
    raise UserError(f"Not a {WHAT} state dict: no '{_BACKBONE}*' tensors. It has: "
                    f"{', '.join(sorted(sd)[:8])} ...")
  backbone = hf_resnet_to_vitjax(bb)
  bb_vars, bb_kwargs = backbone.variables, dict(backbone.model_kwargs)
  bb_kwargs.pop("num_classes")
  s = StateDict({k: v for k, v in sd.items() if not k.startswith(_BACKBONE)}, WHAT)
  wr = ParamWriter(s, np.float32)
  flat = wr.params

  if s.has("model.backbone.position_embedding.row_embeddings.weight"):
    raise UserError(f"{WHAT}: learned position embeddings are not supported (sine only).")
  wr.conv("input_projection", "model.input_projection")
  queries = s.take("model.query_position_embeddings.weight")
  s.check_missing()
  wr.set("query_position_embeddings", queries)
  n_enc = count_indexed(sd, r"model\.encoder\.layers\.(\d+)\.")
  n_dec = count_indexed(sd, r"model\.decoder\.layers\.(\d+)\.")
  proj = ("q_proj", "k_proj", "v_proj", "o_proj")
  for i in range(n_enc):
    t = f"model.encoder.layers.{i}."
    for p in proj:
      wr.linear(f"encoder_{i}/self_attn/{p}", t + "self_attn." + p)
    for n in ("self_attn_layer_norm", "final_layer_norm"):
      wr.layernorm(f"encoder_{i}/{n}", t + n)
    wr.linear(f"encoder_{i}/mlp/fc1", t + "mlp.fc1")
    wr.linear(f"encoder_{i}/mlp/fc2", t + "mlp.fc2")
  for i in range(n_dec):
    t = f"model.decoder.layers.{i}."
    for a in ("self_attn", "encoder_attn"):
      for p in proj:
        wr.linear(f"decoder_{i}/{a}/{p}", f"{t}{a}.{p}")
    for n in ("self_attn_layer_norm", "encoder_attn_layer_norm", "final_layer_norm"):
      wr.layernorm(f"decoder_{i}/{n}", t + n)
    wr.linear(f"decoder_{i}/mlp/fc1", t + "mlp.fc1")
    wr.linear(f"decoder_{i}/mlp/fc2", t + "mlp.fc2")
  wr.layernorm("decoder_layernorm", "model.decoder.layernorm")
  wr.linear("class_labels_classifier", "class_labels_classifier")
  for j in range(3):
    wr.linear(f"bbox_predictor/layers_{j}", f"bbox_predictor.layers.{j}")
  s.finish()
  if n_dec < 1:
    raise UserError(f"{WHAT}: no decoder layers.")
  d = queries.shape[1]
  kwargs = dict(
      num_classes=flat["class_labels_classifier/bias"].shape[0] - 1, backbone=bb_kwargs,
      hidden_dim=d, num_heads=int(cfg.get("encoder_attention_heads", 8)),
      encoder_layers=n_enc, decoder_layers=n_dec,
      ffn_dim=flat["decoder_0/mlp/fc1/bias"].shape[0], num_queries=queries.shape[0])
  for k, v in overrides.items():
    if k in kwargs and k != "backbone" and kwargs[k] != v:
      raise UserError(f"{WHAT}: override {k}={v!r} contradicts the checkpoint "
                      f"({k}={kwargs[k]!r}).")
    kwargs[k] = v
  variables = wr.variables()
  variables["params"]["backbone"] = bb_vars["params"]
  variables["batch_stats"] = {"backbone": bb_vars["batch_stats"]}
  from vitjax.models.detr import DETR  # pylint: disable=g-import-not-at-top
  return converted(variables, DETR, kwargs)
