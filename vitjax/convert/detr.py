"""DETR weights from Hugging Face transformers -> vitjax.

`hf_detr_to_vitjax(src, config=None, **overrides)` reads a
`DetrForObjectDetection` state dict (a .safetensors file, an HF snapshot
folder or an in-memory dict; never a pickle) whose backbone is an HF ResNet
(`use_timm_backbone=False`) and returns `(variables, model_kwargs)` for
`vitjax.models.detr.DETR(**model_kwargs)`.

Read from the weights: the backbone layout, d_model, layer counts, FFN width,
queries and classes. From the config (optional; defaults: the paper's 8
heads): the number of attention heads. Unsupported variants (timm backbones,
learned position embeddings, other activations, DC5 dilation, different
encoder / decoder head counts) are refused. The backbone's frozen BatchNorm
becomes the ResNet's BatchNorm params and 'batch_stats' (vitjax.convert.cnn).
"""

import numpy as np

from vitjax.convert.cnn import hf_resnet_to_vitjax
from vitjax.convert.common import (StateDict, conv_to_flax, count_indexed, layernorm_to_flax,
                                   linear_to_dense, load_state_dict, read_json_config,
                                   unflatten_params)
from vitjax.errors import UserError

WHAT = "Hugging Face DetrForObjectDetection"
_BACKBONE = "model.backbone.model."


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


def hf_detr_to_vitjax(src, config=None, **overrides):
  """HF DetrForObjectDetection -> (variables, DETR kwargs)."""
  cfg = read_json_config(config) or {}
  _check_config(cfg)
  sd = load_state_dict(src)
  if _BACKBONE + "conv1.weight" in sd:
    raise UserError(f"{WHAT}: a timm backbone is not supported; use an HF ResNet backbone.")
  bb = {k[len(_BACKBONE):]: v for k, v in sd.items() if k.startswith(_BACKBONE)}
  if not bb:
    raise UserError(f"Not a {WHAT} state dict: no '{_BACKBONE}*' tensors. It has: "
                    f"{', '.join(sorted(sd)[:8])} ...")
  bb_vars, bb_kwargs = hf_resnet_to_vitjax(bb)
  bb_kwargs.pop("num_classes")
  s = StateDict({k: v for k, v in sd.items() if not k.startswith(_BACKBONE)}, WHAT)
  flat = {}

  def put(name, tree):
    for k, v in tree.items():
      flat[f"{name}/{k}"] = np.asarray(v, np.float32)

  def dense(name, t):
    put(name, linear_to_dense(s.take(t + ".weight"), s.take(t + ".bias")))

  def norm(name, t):
    put(name, layernorm_to_flax(s.take(t + ".weight"), s.take(t + ".bias")))

  if s.has("model.backbone.position_embedding.row_embeddings.weight"):
    raise UserError(f"{WHAT}: learned position embeddings are not supported (sine only).")
  put("input_projection", conv_to_flax(s.take("model.input_projection.weight"),
                                       s.take("model.input_projection.bias")))
  queries = s.take("model.query_position_embeddings.weight")
  s.check_missing()
  flat["query_position_embeddings"] = np.asarray(queries, np.float32)
  n_enc = count_indexed(sd, r"model\.encoder\.layers\.(\d+)\.")
  n_dec = count_indexed(sd, r"model\.decoder\.layers\.(\d+)\.")
  proj = ("q_proj", "k_proj", "v_proj", "o_proj")
  for i in range(n_enc):
    t = f"model.encoder.layers.{i}."
    for p in proj:
      dense(f"encoder_{i}/self_attn/{p}", t + "self_attn." + p)
    for n in ("self_attn_layer_norm", "final_layer_norm"):
      norm(f"encoder_{i}/{n}", t + n)
    dense(f"encoder_{i}/mlp/fc1", t + "mlp.fc1")
    dense(f"encoder_{i}/mlp/fc2", t + "mlp.fc2")
  for i in range(n_dec):
    t = f"model.decoder.layers.{i}."
    for a in ("self_attn", "encoder_attn"):
      for p in proj:
        dense(f"decoder_{i}/{a}/{p}", f"{t}{a}.{p}")
    for n in ("self_attn_layer_norm", "encoder_attn_layer_norm", "final_layer_norm"):
      norm(f"decoder_{i}/{n}", t + n)
    dense(f"decoder_{i}/mlp/fc1", t + "mlp.fc1")
    dense(f"decoder_{i}/mlp/fc2", t + "mlp.fc2")
  norm("decoder_layernorm", "model.decoder.layernorm")
  dense("class_labels_classifier", "class_labels_classifier")
  for j in range(3):
    dense(f"bbox_predictor/layers_{j}", f"bbox_predictor.layers.{j}")
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
  params = unflatten_params(flat)
  params["backbone"] = bb_vars["params"]
  return {"params": params, "batch_stats": {"backbone": bb_vars["batch_stats"]}}, kwargs
