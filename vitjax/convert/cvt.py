"""CvT weights from Hugging Face transformers -> vitjax.

`hf_cvt_to_vitjax(state_dict, config=None, **overrides)` converts a
`CvtForImageClassification` / `CvtModel` state dict (transformers 5.x names)
and returns a `Converted` for
`vitjax.models.cvt.ConvolutionalVisionTransformer`; its `variables` are
{'params': ..., 'batch_stats': ...} (as the CNN importers: BatchNorm weight /
bias -> params scale / bias, running_mean / running_var -> batch_stats mean /
var, num_batches_tracked dropped).

Mapping (HF -> vitjax), with S = encoder.stages.{i}, A = attention.attention:
  S.embedding.convolution_embeddings.projection / .normalization
                                   -> stage_{i}_embed / stage_{i}_embed_norm
  S.cls_token                      -> cls_token (last stage)
  S.layers.{j}                     -> stage_{i}_block_{j}
    layernorm_before / _after      -> norm1 / norm2
    A.convolution_projection_{q,k,v}.convolution_projection.convolution /
      .normalization               -> attn/conv_{q,k,v}/conv, attn/conv_{q,k,v}/bn
    A.projection_{query,key,value} -> attn/q, attn/k, attn/v
    attention.output.dense         -> attn/proj
    intermediate.dense / output.dense -> mlp/fc1 / mlp/fc2
  layernorm (top level) -> norm;  classifier -> head

Widths, depths, kernels and the MLP ratio are read from the weights; heads,
strides and paddings from the config (defaults: CvT-13's). Refused
(UserError): a class token in a stage other than the last, projections other
than 'dw_bn', query strides other than 1.
"""

import re

from vitjax.convert.common import (ParamWriter, StateDict, count_indexed, find_prefix,
                                   layernorm_to_flax, linear_to_dense, load_state_dict,
                                   read_json_config)
from vitjax.convert.registry import Converted, converted, register_converter
from vitjax.errors import UserError

_NAMES = {"q": "query", "k": "key", "v": "value"}


@register_converter(family="cvt", source="hf", model_types=("cvt",),
                    architectures=("CvtForImageClassification", "CvtModel"))
def hf_cvt_to_vitjax(state_dict, config=None, **overrides) -> Converted:
  """HF Cvt state dict (+ optional config) -> Converted (ConvolutionalVisionTransformer)."""
  what = "HF CvT"
  sd = load_state_dict(state_dict)
  cfg = read_json_config(config) or {}
  prefix = find_prefix(sd, "encoder.stages.0.embedding.convolution_embeddings.projection.weight")
  if prefix is None:
    raise UserError(f"Not a {what} state dict: no tensor named "
                    "*encoder.stages.0.embedding.convolution_embeddings.projection.weight.")
  s = StateDict(sd, what, prefix)
  wr = ParamWriter(s)

  n = count_indexed(sd, re.escape(prefix + "encoder.stages.") + r"(\d+)\.")
  for key, want in (("cls_token", [False] * (n - 1) + [True]),
                    ("qkv_projection_method", ["dw_bn"] * n), ("stride_q", [1] * n)):
    got = list(cfg.get(key, want))
    if got != want:
      raise UserError(f"{what}: {key}={got} is not supported (vitjax's CvT has {want}).")
  dims, depths, patch_sizes, kernel, mlp_ratio, qkv_bias = [], [], [], 3, 4.0, True
  for i in range(n):
    st = f"encoder.stages.{i}."
    e = st + "embedding.convolution_embeddings."
    w = wr.conv(f"stage_{i}_embed", e + "projection")
    wr.layernorm(f"stage_{i}_embed_norm", e + "normalization")
    if w is not None:
      dims.append(int(w.shape[0]))
      patch_sizes.append(int(w.shape[2]))
    if i == n - 1:
      cls = s.take(st + "cls_token")
      if cls is not None:
        wr.set("cls_token", cls)
    depth = count_indexed(sd, re.escape(prefix + st + "layers.") + r"(\d+)\.")
    depths.append(depth)
    for j in range(depth):
      p, t = st + f"layers.{j}.", f"stage_{i}_block_{j}"
      a = p + "attention.attention."
      wr.layernorm(f"{t}/norm1", p + "layernorm_before")
      wr.layernorm(f"{t}/norm2", p + "layernorm_after")
      for short, long in _NAMES.items():
        c = a + f"convolution_projection_{long}.convolution_projection."
        cw = wr.conv(f"{t}/attn/conv_{short}/conv", c + "convolution", bias=False)
        if cw is not None:
          kernel = int(cw.shape[2])
        wr.batchnorm(f"{t}/attn/conv_{short}/bn", c + "normalization")
        qkv_bias = s.has(a + f"projection_{long}.bias")
        wr.linear(f"{t}/attn/{short}", a + f"projection_{long}", bias=None)
      wr.linear(f"{t}/attn/proj", p + "attention.output.dense", bias=None)
      w1 = wr.linear(f"{t}/mlp/fc1", p + "intermediate.dense", bias=None)
      wr.linear(f"{t}/mlp/fc2", p + "output.dense", bias=None)
      if w1 is not None:
        mlp_ratio = w1.shape[0] / w1.shape[1]
  # CvtForImageClassification keeps the final LayerNorm outside the `cvt.` prefix.
  if "layernorm.weight" in sd:
    wr.put("norm", layernorm_to_flax(sd["layernorm.weight"], sd["layernorm.bias"]))
    s.used.update({"layernorm.weight", "layernorm.bias"})
  elif s.has("layernorm.weight"):
    wr.layernorm("norm", "layernorm")
  else:
    raise UserError(f"{what}: no final layernorm.weight (a bare CvtModel has none); "
                    "pass a CvtForImageClassification checkpoint.")
  num_classes = 0
  if "classifier.weight" in sd:
    wr.put("head", linear_to_dense(sd["classifier.weight"], sd["classifier.bias"]))
    s.used.update({"classifier.weight", "classifier.bias"})
    num_classes = int(sd["classifier.bias"].shape[0])
  s.finish(ignore=[r"\.num_batches_tracked$"])
  stride_kv = set(int(x) for x in cfg.get("stride_kv", [2] * n))
  if len(stride_kv) != 1:
    raise UserError(f"{what}: per-stage stride_kv {cfg['stride_kv']} is not supported.")
  kwargs = dict(
      num_classes=num_classes, embed_dims=tuple(dims), depths=tuple(depths),
      num_heads=tuple(int(h) for h in cfg.get("num_heads", (1, 3, 6))),
      mlp_ratio=float(mlp_ratio), patch_sizes=tuple(patch_sizes),
      patch_strides=tuple(int(x) for x in cfg.get("patch_stride", (4, 2, 2))),
      patch_paddings=tuple(int(x) for x in cfg.get("patch_padding", (2, 1, 1))),
      kernel_qkv=kernel, stride_kv=stride_kv.pop(), qkv_bias=bool(qkv_bias),
      drop_path_rate=0.0)
  fixed = ("embed_dims", "depths", "mlp_ratio", "patch_sizes", "kernel_qkv", "qkv_bias")
  for k in overrides:
    if k in fixed and overrides[k] != kwargs[k]:
      raise UserError(f"{what}: {k}={overrides[k]!r} contradicts the checkpoint "
                      f"({k}={kwargs[k]!r}); it cannot be overridden.")
  kwargs.update(overrides)
  if num_classes and kwargs["num_classes"] != num_classes:
    wr.drop("head/")
  from vitjax.models.cvt import ConvolutionalVisionTransformer  # pylint: disable=g-import-not-at-top
  return converted(wr.variables(batch_stats=True), ConvolutionalVisionTransformer, kwargs)


__all__ = ["hf_cvt_to_vitjax"]
