"""NAT / DiNAT weights from Hugging Face transformers -> vitjax.

`hf_dinat_to_vitjax(state_dict, config=None, **overrides)` converts a
`DinatForImageClassification` / `DinatModel` state dict (transformers 5.x
names; HF's DiNAT with all dilations 1 is NAT) and returns a `Converted`
(variables {'params'}, model name, kwargs) for `vitjax.models.nat.NAT`.

Mapping (HF -> vitjax), with L = encoder.levels.{i}, B = L.layers.{j}:
  embeddings.patch_embeddings.projection.{0,1} -> tokenizer_conv{0,1}
  embeddings.norm                              -> tokenizer_norm
  B.layernorm_before / layernorm_after         -> level_{i}_block_{j}/norm1 / norm2
  B.attention.self.{query,key,value}           -> .../attn/qkv (concatenated q, k, v)
  B.attention.self.rpb                         -> .../attn/rpb
  B.attention.output.dense                     -> .../attn/proj
  B.intermediate.dense / B.output.dense        -> .../mlp/fc1 / mlp/fc2
  B.layer_scale_parameters [2, C]              -> .../gamma1, gamma2
  L.downsample.reduction / L.downsample.norm   -> level_{i+1}_downsample / _downsample_norm
  layernorm (top level) -> norm;  classifier -> head

Widths, depths, kernel size, MLP ratio and layer scale are read from the
weights; heads, dilations and the LayerNorm epsilon from the config
(defaults: DiNAT-Mini's heads, all dilations 1).
"""

import re

import numpy as np

from vitjax.convert.common import (ParamWriter, StateDict, count_indexed, find_prefix,
                                   linear_to_dense, load_state_dict, read_json_config)
from vitjax.convert.registry import Converted, converted, register_converter
from vitjax.errors import UserError


@register_converter(family="nat", source="hf", model_types=("dinat",),
                    architectures=("DinatForImageClassification", "DinatModel"))
def hf_dinat_to_vitjax(state_dict, config=None, **overrides) -> Converted:
  """HF Dinat state dict (+ optional config) -> Converted (NAT)."""
  what = "HF DiNAT"
  sd = load_state_dict(state_dict)
  cfg = read_json_config(config) or {}
  first = "embeddings.patch_embeddings.projection.0.weight"
  prefix = find_prefix(sd, first)
  if prefix is None:
    raise UserError(f"Not a {what} state dict: no tensor named *{first}.")
  s = StateDict(sd, what, prefix)
  wr = ParamWriter(s)

  e = "embeddings."
  for i in range(2):
    wr.conv(f"tokenizer_conv{i}", e + f"patch_embeddings.projection.{i}")
  wr.layernorm("tokenizer_norm", e + "norm")
  n = count_indexed(sd, re.escape(prefix + "encoder.levels.") + r"(\d+)\.")
  depths, embed_dim, kernel, mlp_ratio, layer_scale, qkv_bias = [], None, 7, 3.0, 0.0, True
  for i in range(n):
    lv = f"encoder.levels.{i}."
    depth = count_indexed(sd, re.escape(prefix + lv + "layers.") + r"(\d+)\.")
    depths.append(depth)
    for j in range(depth):
      b, t = lv + f"layers.{j}.", f"level_{i}_block_{j}"
      a = b + "attention.self."
      wr.layernorm(f"{t}/norm1", b + "layernorm_before")
      wr.layernorm(f"{t}/norm2", b + "layernorm_after")
      ws = [s.take(a + f"{x}.weight") for x in ("query", "key", "value")]
      bs = [s.take(a + f"{x}.bias", optional=True) for x in ("query", "key", "value")]
      qkv_bias = all(x is not None for x in bs)
      if all(w is not None for w in ws):
        wr.put(f"{t}/attn/qkv", linear_to_dense(
            np.concatenate(ws, 0), np.concatenate(bs, 0) if qkv_bias else None))
        if embed_dim is None:
          embed_dim = int(ws[0].shape[0])
      rpb = s.take(a + "rpb")
      if rpb is not None:
        wr.set(f"{t}/attn/rpb", np.asarray(rpb))
        kernel = (int(rpb.shape[-1]) + 1) // 2
      wr.linear(f"{t}/attn/proj", b + "attention.output.dense", bias=None)
      w1 = wr.linear(f"{t}/mlp/fc1", b + "intermediate.dense", bias=None)
      wr.linear(f"{t}/mlp/fc2", b + "output.dense", bias=None)
      if w1 is not None:
        mlp_ratio = w1.shape[0] / w1.shape[1]
      gamma = s.take(b + "layer_scale_parameters", optional=True)
      if gamma is not None:
        wr.set(f"{t}/gamma1", np.asarray(gamma[0]))
        wr.set(f"{t}/gamma2", np.asarray(gamma[1]))
        layer_scale = 1.0  # any non-zero value: the model creates gamma1 / gamma2
    if s.has(lv + "downsample.reduction.weight"):
      wr.conv(f"level_{i + 1}_downsample", lv + "downsample.reduction", bias=False)
      wr.layernorm(f"level_{i + 1}_downsample_norm", lv + "downsample.norm")
  # DinatForImageClassification keeps the classifier outside the `dinat.` prefix.
  wr.layernorm("norm", "layernorm")
  num_classes = 0
  if "classifier.weight" in sd:
    wr.put("head", linear_to_dense(sd["classifier.weight"], sd["classifier.bias"]))
    s.used.update({"classifier.weight", "classifier.bias"})
    num_classes = int(sd["classifier.bias"].shape[0])
  s.finish()
  dilations = cfg.get("dilations") or [[1] * d for d in depths]
  kwargs = dict(
      num_classes=num_classes, embed_dim=embed_dim, depths=tuple(depths),
      num_heads=tuple(int(h) for h in cfg.get("num_heads", (2, 4, 8, 16))),
      kernel_size=kernel, dilations=tuple(tuple(int(x) for x in lv) for lv in dilations),
      mlp_ratio=float(mlp_ratio), layer_scale=layer_scale, qkv_bias=qkv_bias,
      layer_norm_eps=float(cfg.get("layer_norm_eps", 1e-5)), drop_path_rate=0.0)
  fixed = ("embed_dim", "depths", "kernel_size", "mlp_ratio", "qkv_bias")
  for k in overrides:
    if k in fixed and overrides[k] != kwargs[k]:
      raise UserError(f"{what}: {k}={overrides[k]!r} contradicts the checkpoint "
                      f"({k}={kwargs[k]!r}); it cannot be overridden.")
  if bool(overrides.get("layer_scale", layer_scale)) != bool(layer_scale):
    raise UserError(f"{what}: the checkpoint {'has' if layer_scale else 'has no'} layer "
                    "scale; layer_scale cannot be switched by an override.")
  kwargs.update(overrides)
  if num_classes and kwargs["num_classes"] != num_classes:
    wr.drop("head/")
  from vitjax.models.nat import NAT  # pylint: disable=g-import-not-at-top
  return converted(wr.variables(), NAT, kwargs)


__all__ = ["hf_dinat_to_vitjax"]
