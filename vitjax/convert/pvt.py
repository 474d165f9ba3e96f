"""PVT v1 / v2 weights from Hugging Face transformers -> vitjax.

`hf_pvt_to_vitjax(state_dict, config=None, **overrides)` converts a
`PvtForImageClassification` / `PvtModel` (v1) state dict for
`vitjax.models.pvt.PyramidVisionTransformer`:
  encoder.patch_embeddings.{i}.projection / .layer_norm -> stage_{i}_patch_embed / _norm
  encoder.patch_embeddings.{i}.position_embeddings      -> stage_{i}_pos_embed
  encoder.patch_embeddings.{last}.cls_token             -> cls_token
  encoder.block.{i}.{j}: layer_norm_1/2 -> norm1/2; attention.self.query -> attn/q;
    attention.self.key + value -> attn/kv; attention.self.sequence_reduction /
    .layer_norm -> attn/sr / attn/norm; attention.output.dense -> attn/proj;
    mlp.dense1 / dense2 -> mlp/fc1 / fc2
  encoder.layer_norm -> norm;  classifier -> head
image_size (the grid the position embeddings are stored for) is read from
their shapes; other input sizes resample them.

`hf_pvt_v2_to_vitjax(state_dict, config=None, **overrides)` converts a
`PvtV2ForImageClassification` / `PvtV2Model` state dict (transformers 5.x
names) for `vitjax.models.pvt.PyramidVisionTransformerV2`. Both return a
`Converted` (variables {'params'}, model name, kwargs).

Mapping (HF -> vitjax), with L = encoder.layers.{i}:
  L.patch_embedding.proj / .layer_norm -> stage_{i}_patch_embed / _patch_embed_norm
  L.blocks.{j}                         -> stage_{i}_block_{j}
    layer_norm_1 / layer_norm_2        -> norm1 / norm2
    attention.query                    -> attn/q
    attention.key + attention.value    -> attn/kv (fused [C, 2C], keys first)
    attention.spatial_reduction / .layer_norm -> attn/sr / attn/norm
    attention.proj                     -> attn/proj
    mlp.dense1 / mlp.dwconv.dwconv / mlp.dense2 -> mlp/fc1 / mlp/dwconv / mlp/fc2
  L.layer_norm                         -> stage_{i}_norm
  classifier                           -> head

Widths, depths, kernel sizes, reduction ratios and the MLP ratios are read
from the weights; heads, strides, linear attention and the LayerNorm epsilon
from the config (defaults: the released models' values, heads (1, 2, 5, 8)).
"""

import re

import numpy as np

from vitjax.convert.common import (ParamWriter, StateDict, cast_params, count_indexed,
                                   find_prefix, linear_to_dense, load_state_dict,
                                   read_json_config, unflatten_params)
from vitjax.convert.registry import Converted, converted, register_converter
from vitjax.errors import UserError


def _kv(wr: ParamWriter, dst, k, v):
  """Separate key / value Linears `k`, `v` -> one fused Dense [C, 2C] (keys first)."""
  kw, vw = wr.s.take(k + ".weight"), wr.s.take(v + ".weight")
  kb, vb = wr.s.take(k + ".bias", optional=True), wr.s.take(v + ".bias", optional=True)
  if kw is None or vw is None:
    return
  wr.put(dst, linear_to_dense(np.concatenate([kw, vw]),
                              None if kb is None else np.concatenate([kb, vb])))
  return kb is not None


def _head(wr: ParamWriter, sd, name="classifier"):
  """The classifier (outside the model prefix), if present; returns num_classes."""
  if name + ".weight" in sd:
    wr.put("head", linear_to_dense(sd[name + ".weight"], sd[name + ".bias"]))
    wr.s.used.update({name + ".weight", name + ".bias"})
    return int(sd[name + ".bias"].shape[0])
  return 0


def _fix(what, kwargs, overrides, fixed):
  for k in overrides:
    if k in fixed and k in kwargs and overrides[k] != kwargs[k]:
      raise UserError(f"{what}: {k}={overrides[k]!r} contradicts the checkpoint "
                      f"({k}={kwargs[k]!r}); it cannot be overridden.")


@register_converter(family="pvt_v2", source="hf", model_types=("pvt_v2",),
                    architectures=("PvtV2ForImageClassification", "PvtV2Model"))
def hf_pvt_v2_to_vitjax(state_dict, config=None, *, param_dtype=np.float32, **overrides
                        ) -> Converted:
  """HF PvtV2 state dict (+ optional config) -> Converted (PyramidVisionTransformerV2)."""
  what = "HF PVT v2"
  sd = load_state_dict(state_dict)
  cfg = read_json_config(config) or {}
  prefix = find_prefix(sd, "encoder.layers.0.patch_embedding.proj.weight")
  if prefix is None:
    raise UserError(f"Not a {what} state dict: no tensor named "
                    "*encoder.layers.0.patch_embedding.proj.weight.")
  s = StateDict(sd, what, prefix)
  wr = ParamWriter(s)
  num_stages = count_indexed(sd, re.escape(prefix + "encoder.layers.") + r"(\d+)\.")
  linear = bool(cfg.get("linear_attention", False))
  dims, depths, patch_sizes, srs, mlp_ratios, qkv_bias = [], [], [], [], [], True
  for i in range(num_stages):
    L = f"encoder.layers.{i}."
    w = wr.conv(f"stage_{i}_patch_embed", L + "patch_embedding.proj", bias=None)
    wr.layernorm(f"stage_{i}_patch_embed_norm", L + "patch_embedding.layer_norm")
    dims.append(int(w.shape[0]))
    patch_sizes.append(int(w.shape[2]))
    depth = count_indexed(sd, re.escape(prefix + L + "blocks.") + r"(\d+)\.")
    depths.append(depth)
    sr = 1
    for j in range(depth):
      p, t = L + f"blocks.{j}.", f"stage_{i}_block_{j}"
      wr.layernorm(f"{t}/norm1", p + "layer_norm_1")
      wr.layernorm(f"{t}/norm2", p + "layer_norm_2")
      wr.linear(f"{t}/attn/q", p + "attention.query", bias=None)
      qkv_bias = bool(_kv(wr, f"{t}/attn/kv", p + "attention.key", p + "attention.value"))
      wr.linear(f"{t}/attn/proj", p + "attention.proj", bias=None)
      if s.has(p + "attention.spatial_reduction.weight"):
        srw = wr.conv(f"{t}/attn/sr", p + "attention.spatial_reduction", bias=None)
        wr.layernorm(f"{t}/attn/norm", p + "attention.layer_norm")
        sr = int(srw.shape[2])
      w1 = wr.linear(f"{t}/mlp/fc1", p + "mlp.dense1", bias=None)
      wr.conv(f"{t}/mlp/dwconv", p + "mlp.dwconv.dwconv", bias=None)
      wr.linear(f"{t}/mlp/fc2", p + "mlp.dense2", bias=None)
      if j == 0 and w1 is not None:
        mlp_ratios.append(w1.shape[0] / w1.shape[1])
    srs.append(sr)
    wr.layernorm(f"stage_{i}_norm", L + "layer_norm")
  num_classes = _head(wr, sd)
  s.finish(ignore=[r"\.num_batches_tracked$"])
  if linear and any(r != 1 for r in srs):
    raise UserError(f"{what}: config says linear_attention but the reductions are "
                    f"{srs}; pass the checkpoint's own config.")
  kwargs = dict(
      num_classes=num_classes, embed_dims=tuple(dims), depths=tuple(depths),
      num_heads=tuple(int(h) for h in cfg.get("num_attention_heads", (1, 2, 5, 8))),
      mlp_ratios=tuple(mlp_ratios),
      sr_ratios=tuple(int(r) for r in cfg.get("sr_ratios", srs)) if linear else tuple(srs),
      patch_sizes=tuple(patch_sizes),
      strides=tuple(int(x) for x in cfg.get("strides", (4, 2, 2, 2)[:num_stages])),
      linear=linear, qkv_bias=qkv_bias,
      layer_norm_eps=float(cfg.get("layer_norm_eps", 1e-6)), drop_path_rate=0.0)
  _fix(what, kwargs, overrides, ("embed_dims", "depths", "mlp_ratios", "sr_ratios",
                                 "patch_sizes", "linear", "qkv_bias"))
  kwargs.update(overrides)
  flat = wr.params
  if num_classes and kwargs["num_classes"] != num_classes:
    flat = {k: v for k, v in flat.items() if not k.startswith("head/")}
  from vitjax.models.pvt import PyramidVisionTransformerV2  # pylint: disable=g-import-not-at-top
  return converted({"params": cast_params(unflatten_params(flat), param_dtype)},
                   PyramidVisionTransformerV2, kwargs)


def _v1_image_size(pos, patch, what):
  if pos is None:
    return 224
  side = int(round(np.sqrt(pos.shape[1])))
  if side * side != pos.shape[1]:
    raise UserError(f"{what}: {pos.shape[1]} stage-0 position embeddings are not a "
                    "square grid; non-square inputs are not supported.")
  return side * patch


@register_converter(family="pvt", source="hf", model_types=("pvt",),
                    architectures=("PvtForImageClassification", "PvtModel"))
def hf_pvt_to_vitjax(state_dict, config=None, *, param_dtype=np.float32, **overrides
                     ) -> Converted:
  """HF Pvt (v1) state dict (+ optional config) -> Converted (PyramidVisionTransformer)."""
  what = "HF PVT"
  sd = load_state_dict(state_dict)
  cfg = read_json_config(config) or {}
  prefix = find_prefix(sd, "encoder.patch_embeddings.0.projection.weight")
  if prefix is None:
    raise UserError(f"Not a {what} (v1) state dict: no tensor named "
                    "*encoder.patch_embeddings.0.projection.weight.")
  s = StateDict(sd, what, prefix)
  wr = ParamWriter(s)
  num_stages = count_indexed(sd, re.escape(prefix + "encoder.patch_embeddings.") + r"(\d+)\.")
  dims, depths, patch_sizes, srs, mlp_ratios, qkv_bias = [], [], [], [], [], True
  for i in range(num_stages):
    e = f"encoder.patch_embeddings.{i}."
    w = wr.conv(f"stage_{i}_patch_embed", e + "projection", bias=None)
    wr.layernorm(f"stage_{i}_patch_embed_norm", e + "layer_norm")
    pos = s.take(e + "position_embeddings")
    if pos is not None:
      wr.params[f"stage_{i}_pos_embed"] = pos
    if i == num_stages - 1:
      cls = s.take(e + "cls_token")
      if cls is not None:
        wr.params["cls_token"] = cls
    dims.append(int(w.shape[0]))
    patch_sizes.append(int(w.shape[2]))
    depth = count_indexed(sd, re.escape(prefix + f"encoder.block.{i}.") + r"(\d+)\.")
    depths.append(depth)
    sr = 1
    for j in range(depth):
      p, t = f"encoder.block.{i}.{j}.", f"stage_{i}_block_{j}"
      a = p + "attention.self."
      wr.layernorm(f"{t}/norm1", p + "layer_norm_1")
      wr.layernorm(f"{t}/norm2", p + "layer_norm_2")
      wr.linear(f"{t}/attn/q", a + "query", bias=None)
      qkv_bias = bool(_kv(wr, f"{t}/attn/kv", a + "key", a + "value"))
      wr.linear(f"{t}/attn/proj", p + "attention.output.dense", bias=None)
      if s.has(a + "sequence_reduction.weight"):
        sr = int(wr.conv(f"{t}/attn/sr", a + "sequence_reduction", bias=None).shape[2])
        wr.layernorm(f"{t}/attn/norm", a + "layer_norm")
      w1 = wr.linear(f"{t}/mlp/fc1", p + "mlp.dense1", bias=None)
      wr.linear(f"{t}/mlp/fc2", p + "mlp.dense2", bias=None)
      if j == 0 and w1 is not None:
        mlp_ratios.append(w1.shape[0] / w1.shape[1])
    srs.append(sr)
  wr.layernorm("norm", "encoder.layer_norm")
  num_classes = _head(wr, sd)
  s.finish(ignore=[r"\.num_batches_tracked$"])
  if "strides" in cfg and list(cfg["strides"]) != list(cfg.get("patch_sizes", patch_sizes)):
    raise UserError(f"{what}: strides {cfg['strides']} differing from the patch sizes "
                    f"{cfg.get('patch_sizes')} are not supported.")
  kwargs = dict(
      num_classes=num_classes, embed_dims=tuple(dims), depths=tuple(depths),
      num_heads=tuple(int(h) for h in cfg.get("num_attention_heads", (1, 2, 5, 8))),
      mlp_ratios=tuple(mlp_ratios), sr_ratios=tuple(srs), patch_sizes=tuple(patch_sizes),
      image_size=_v1_image_size(wr.params.get("stage_0_pos_embed"), patch_sizes[0], what),
      qkv_bias=qkv_bias, layer_norm_eps=float(cfg.get("layer_norm_eps", 1e-6)),
      drop_path_rate=0.0)
  _fix(what, kwargs, overrides, ("embed_dims", "depths", "mlp_ratios", "sr_ratios",
                                 "patch_sizes", "qkv_bias", "image_size"))
  kwargs.update(overrides)
  flat = wr.params
  if num_classes and kwargs["num_classes"] != num_classes:
    flat = {k: v for k, v in flat.items() if not k.startswith("head/")}
  from vitjax.models.pvt import PyramidVisionTransformer  # pylint: disable=g-import-not-at-top
  return converted({"params": cast_params(unflatten_params(flat), param_dtype)},
                   PyramidVisionTransformer, kwargs)


__all__ = ["hf_pvt_to_vitjax", "hf_pvt_v2_to_vitjax"]
