"""Swin v1 / v2 weights from Hugging Face transformers -> vitjax.

`hf_swin_to_vitjax(state_dict, config=None, **overrides)` converts a
`SwinForImageClassification` / `SwinModel` or `Swinv2ForImageClassification`
/ `Swinv2Model` state dict (tensor names of transformers 5.x; v1's older
`attention.self.query/key/value` + `attention.output.dense` +
`intermediate/output.dense` names are read too) and returns a `Converted`
(variables {'params'}, model name, kwargs) for
`vitjax.models.swin.SwinTransformer`.

Mapping (HF -> vitjax):
  embeddings.patch_embeddings.projection -> patch_embed/proj (OIHW -> HWIO)
  embeddings.norm                        -> patch_embed_norm
  encoder.layers.{i}.blocks.{j}          -> stage_{i}_block_{j}
    layernorm_before / layernorm_after   -> norm1 / norm2 (v1: before attn /
                                            MLP; v2: after them, post-norm)
    q, k, v projections                  -> attn/qkv (fused [C, 3C]); v2's
                                            query / value biases -> attn/q_bias,
                                            attn/v_bias (the key has none)
    output projection                    -> attn/proj
    v1 relative_position_bias_table      -> attn/relative_position_bias_table
    v2 logit_scale [heads, 1, 1]         -> attn/logit_scale [heads]
    v2 continuous_position_bias_mlp.0/.2 -> attn/cpb_mlp/fc1, fc2
    mlp.fc1/fc2 (v1) or intermediate.dense/output.dense (v2) -> mlp/fc1, fc2
  encoder.layers.{i}.downsample          -> stage_{i+1}_downsample (norm, reduction)
  layernorm                              -> norm;  classifier -> head

Heads per stage are read from the weights (bias-table / logit-scale shapes).
The window size is read from the first stage's bias table (v1) or from the
config (v2; window_size= otherwise). A different `window_size=` override is
allowed: v1 bias tables are resampled (`adapt_window_size`, bicubic), v2
needs nothing (its position bias is an MLP of coordinates).
Not supported (UserError): absolute position embeddings
(use_absolute_embeddings=True) and the masked-image-modelling variants.

`swin_hf_snapshot` (registered exporter) goes the other way: a vitjax
SwinTransformer -> the state dict of Swin(v2)ForImageClassification (or
Swin(v2)Model without a head) in the Hub's tensor names, which transformers 4
and 5 both load, and its config.json dict.
"""

import math
import re
from typing import Any, Dict, Mapping, Optional

import numpy as np

from vitjax.convert.common import (ParamWriter, StateDict, TorchWriter, cast_params,
                                   count_indexed, find_prefix, flatten_params, hf_labels,
                                   linear_to_dense, load_state_dict,
                                   unflatten_params)
from vitjax.convert.registry import (Converted, converted, register_converter,
                                     register_exporter)
from vitjax.errors import UserError


def _config_dict(config) -> Dict[str, Any]:
  if config is None:
    return {}
  if isinstance(config, str):
    import json  # pylint: disable=g-import-not-at-top
    with open(config) as f:
      return json.load(f)
  if hasattr(config, "to_dict"):
    return config.to_dict()
  return dict(config)


@register_converter(
    family="swin", source="hf", model_types=("swin", "swinv2"),
    architectures=("SwinForImageClassification", "SwinModel",
                   "Swinv2ForImageClassification", "Swinv2Model"))
def hf_swin_to_vitjax(state_dict, config=None, *, param_dtype=np.float32, **overrides
                      ) -> Converted:
  """HF Swin / Swinv2 state dict (+ optional config) -> Converted (SwinTransformer)."""
  sd = load_state_dict(state_dict)
  cfg = _config_dict(config)
  for version, stem in ((2, "swinv2."), (1, "swin.")):
    prefix = find_prefix(sd, stem + "embeddings.patch_embeddings.projection.weight")
    if prefix is not None:
      prefix += stem
      break
  else:
    prefix = find_prefix(sd, "embeddings.patch_embeddings.projection.weight")
    if prefix is None:
      raise UserError("Not a Hugging Face Swin / Swinv2 state dict: no tensor named "
                      "*embeddings.patch_embeddings.projection.weight.")
    version = 2 if any(k.endswith("logit_scale") for k in sd) else 1
  what = f"HF Swin{'v2' if version == 2 else ''}"
  if prefix + "embeddings.position_embeddings" in sd:
    raise UserError(f"{what}: absolute position embeddings (use_absolute_embeddings="
                    "True) are not supported by vitjax's Swin.")
  s = StateDict(sd, what, prefix)
  wr = ParamWriter(s)
  flat = wr.params
  w = wr.conv("patch_embed/proj", "embeddings.patch_embeddings.projection")
  wr.layernorm("patch_embed_norm", "embeddings.norm")
  embed_dim, patch = w.shape[0], w.shape[2]

  num_stages = count_indexed(sd, re.escape(prefix + "encoder.layers.") + r"(\d+)\.")
  if not num_stages:
    raise UserError(f"Not a {what} state dict: no encoder.layers.<i>.* tensors.")
  depths, heads, window, qkv_bias, mlp_ratio = [], [], None, True, 4.0
  for i in range(num_stages):
    depth = count_indexed(sd, re.escape(prefix + f"encoder.layers.{i}.blocks.") + r"(\d+)\.")
    depths.append(depth)
    for j in range(depth):
      p, t = f"encoder.layers.{i}.blocks.{j}.", f"stage_{i}_block_{j}"
      wr.layernorm(f"{t}/norm1", p + "layernorm_before")
      wr.layernorm(f"{t}/norm2", p + "layernorm_after")
      if version == 1:
        new = s.has(p + "attention.q_proj.weight")
        names = (["attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj",
                  "attention.relative_position_bias.relative_position_bias_table",
                  "mlp.fc1", "mlp.fc2"] if new else
                 ["attention.self.query", "attention.self.key", "attention.self.value",
                  "attention.output.dense", "attention.self.relative_position_bias_table",
                  "intermediate.dense", "output.dense"])
        qw, kw_, vw = (s.take(p + n + ".weight") for n in names[:3])
        qb, kb, vb = (s.take(p + n + ".bias", optional=True) for n in names[:3])
        qkv_bias = qb is not None
        if any(a is None for a in (qw, kw_, vw)):
          continue
        wr.put(f"{t}/attn/qkv", linear_to_dense(
            np.concatenate([qw, kw_, vw]),
            np.concatenate([qb, kb, vb]) if qkv_bias else None))
        wr.linear(f"{t}/attn/proj", p + names[3])
        table = s.take(p + names[4])
        if table is not None:
          flat[f"{t}/attn/relative_position_bias_table"] = table
          if j == 0:
            heads.append(table.shape[1])
          if window is None:
            window = (int(round(math.sqrt(table.shape[0]))) + 1) // 2
        fc1, fc2 = names[5], names[6]
      else:
        a = p + "attention.self."
        qw, kw_, vw = (s.take(a + n + ".weight") for n in ("query", "key", "value"))
        if any(a is None for a in (qw, kw_, vw)):
          continue
        wr.put(f"{t}/attn/qkv", linear_to_dense(np.concatenate([qw, kw_, vw])))
        qb, vb = s.take(a + "query.bias", optional=True), s.take(a + "value.bias", optional=True)
        if s.has(a + "key.bias"):
          raise UserError(f"{what}: a key bias ({prefix}{a}key.bias) is not part of Swin v2.")
        qkv_bias = qb is not None
        if qkv_bias:
          flat[f"{t}/attn/q_bias"], flat[f"{t}/attn/v_bias"] = qb, vb
        wr.linear(f"{t}/attn/proj", p + "attention.output.dense")
        scale = s.take(a + "logit_scale")
        if scale is not None:
          flat[f"{t}/attn/logit_scale"] = scale.reshape(-1)
          if j == 0:
            heads.append(scale.size)
        wr.linear(f"{t}/attn/cpb_mlp/fc1", a + "continuous_position_bias_mlp.0")
        wr.linear(f"{t}/attn/cpb_mlp/fc2", a + "continuous_position_bias_mlp.2", bias=False)
        fc1, fc2 = "intermediate.dense", "output.dense"
      w1 = wr.linear(f"{t}/mlp/fc1", p + fc1)
      wr.linear(f"{t}/mlp/fc2", p + fc2)
      if w1 is not None:
        mlp_ratio = w1.shape[0] / w1.shape[1]
    if i < num_stages - 1:
      d = f"encoder.layers.{i}.downsample."
      wr.layernorm(f"stage_{i + 1}_downsample/norm", d + "norm")
      wr.linear(f"stage_{i + 1}_downsample/reduction", d + "reduction", bias=False)
  wr.layernorm("norm", "layernorm")
  num_classes = 0
  if "classifier.weight" in sd:
    wr.put("head", linear_to_dense(sd["classifier.weight"], sd["classifier.bias"]))
    s.used.update({"classifier.weight", "classifier.bias"})
    num_classes = flat["head/bias"].shape[0]
  s.finish(ignore=[r"relative_position_index$", r"relative_coords_table$",
                   r"pooler\.", r"\.num_batches_tracked$"])

  if version == 2:
    window = cfg.get("window_size")
    if window is None and "window_size" not in overrides:
      raise UserError(f"{what}: the window size is not stored in the weights; pass the "
                      "model's config (config=...) or window_size=...")
  kwargs = dict(
      num_classes=num_classes, patch_size=int(patch), embed_dim=int(embed_dim),
      depths=tuple(depths), num_heads=tuple(int(h) for h in heads),
      window_size=int(window) if window else None, mlp_ratio=float(mlp_ratio),
      version=version, qkv_bias=bool(qkv_bias),
      layer_norm_eps=float(cfg.get("layer_norm_eps", 1e-5)), drop_path_rate=0.0)
  if version == 2:
    pws = cfg.get("pretrained_window_sizes") or [0] * num_stages
    kwargs["pretrained_window_sizes"] = tuple(int(x) for x in pws)
  fixed = ("patch_size", "embed_dim", "depths", "num_heads", "version", "qkv_bias",
           "mlp_ratio")
  for k in overrides:
    if k in fixed and overrides[k] != kwargs[k]:
      raise UserError(f"{what}: {k}={overrides[k]!r} contradicts the checkpoint "
                      f"({k}={kwargs[k]!r}); it cannot be overridden.")
  new_window = overrides.get("window_size", kwargs["window_size"])
  old_window = kwargs["window_size"]
  kwargs.update(overrides)
  if num_classes and kwargs["num_classes"] != num_classes:
    flat = {k: v for k, v in flat.items() if not k.startswith("head/")}
  params = unflatten_params(flat)
  if version == 1 and new_window != old_window:
    params = adapt_window_size(params, new_window, image_size=overrides.get("image_size"),
                               model_kwargs=kwargs)
  kwargs.pop("image_size", None)
  from vitjax.models.swin import SwinTransformer  # pylint: disable=g-import-not-at-top
  return converted({"params": cast_params(params, param_dtype)}, SwinTransformer, kwargs)


def adapt_window_size(params, new_window_size: int, *, model_kwargs: Mapping[str, Any],
                      image_size: Optional[int] = None, method: str = "bicubic"):
  """Resamples every v1 relative-position-bias table to the window each stage
  uses at `new_window_size` (clamped to the stage's map for `image_size`,
  default: the native size, 56 patches per side for patch 4, i.e. 224).
  Tables whose size does not change are kept exactly."""
  from vitjax.models.layers import resample_relative_position_bias_table  # pylint: disable=g-import-not-at-top
  from vitjax.models.swin import stage_windows  # pylint: disable=g-import-not-at-top
  patch = int(model_kwargs["patch_size"])
  r = (image_size or 224) // patch
  flat = flatten_params(params)
  out = dict(flat)
  for i in range(len(model_kwargs["depths"])):
    m, _ = stage_windows(r // 2 ** i, r // 2 ** i, new_window_size)
    for k, v in flat.items():
      if k.startswith(f"stage_{i}_block_") and k.endswith("relative_position_bias_table"):
        out[k] = np.asarray(resample_relative_position_bias_table(v, m, method=method))
  return unflatten_params(out)


@register_exporter(family="swin", models=("SwinTransformer",))
def swin_hf_snapshot(model, variables, image_size=224):
  """A vitjax SwinTransformer (v1 or v2) -> (HF state dict, config.json dict).

  image_size: what the config records (HF Swin runs on any size; its windows
  are clamped to the maps as vitjax's are).
  """
  v2 = model.version == 2
  what = f"Hugging Face Swin{'v2' if v2 else ''}"
  t = TorchWriter(variables)
  head = model.num_classes > 0
  p = ("swinv2." if v2 else "swin.") if head else ""
  t.conv(p + "embeddings.patch_embeddings.projection", "patch_embed/proj")
  t.layernorm(p + "embeddings.norm", "patch_embed_norm")
  for i, depth in enumerate(model.depths):
    for j in range(depth):
      b, src = f"{p}encoder.layers.{i}.blocks.{j}.", f"stage_{i}_block_{j}"
      a = b + "attention.self."
      t.layernorm(b + "layernorm_before", f"{src}/norm1")
      t.layernorm(b + "layernorm_after", f"{src}/norm2")
      qkv = t.layer(f"{src}/attn/qkv")
      weights = np.split(np.asarray(qkv["kernel"]).T, 3)
      biases = np.split(np.asarray(qkv["bias"]), 3) if "bias" in qkv else (None,) * 3
      if v2:
        biases = (t.get(f"{src}/attn/q_bias"), None, t.get(f"{src}/attn/v_bias")) if (
            model.qkv_bias) else (None,) * 3
      for name, w, bias in zip(("query", "key", "value"), weights, biases):
        t.tensor(a + name + ".weight", w)
        if bias is not None:
          t.tensor(a + name + ".bias", bias)
      t.linear(b + "attention.output.dense", f"{src}/attn/proj")
      if v2:
        t.tensor(a + "logit_scale", t.get(f"{src}/attn/logit_scale").reshape(-1, 1, 1))
        t.linear(a + "continuous_position_bias_mlp.0", f"{src}/attn/cpb_mlp/fc1")
        t.linear(a + "continuous_position_bias_mlp.2", f"{src}/attn/cpb_mlp/fc2")
      else:
        t.tensor(a + "relative_position_bias_table",
                 t.get(f"{src}/attn/relative_position_bias_table"))
      t.linear(b + "intermediate.dense", f"{src}/mlp/fc1")
      t.linear(b + "output.dense", f"{src}/mlp/fc2")
    if i + 1 < len(model.depths):
      d = f"{p}encoder.layers.{i}.downsample."
      t.layernorm(d + "norm", f"stage_{i + 1}_downsample/norm")
      t.linear(d + "reduction", f"stage_{i + 1}_downsample/reduction")
  t.layernorm(p + "layernorm", "norm")
  if head:
    t.linear("classifier", "head")
  sd = t.finish(what)
  arch = ("Swinv2" if v2 else "Swin") + ("ForImageClassification" if head else "Model")
  config = dict(
      model_type="swinv2" if v2 else "swin", architectures=[arch],
      image_size=int(image_size), patch_size=int(model.patch_size), num_channels=int(
          variables["params"]["patch_embed"]["proj"]["kernel"].shape[2]),
      embed_dim=int(model.embed_dim), depths=[int(d) for d in model.depths],
      num_heads=[int(h) for h in model.num_heads], window_size=int(model.window_size),
      mlp_ratio=float(model.mlp_ratio), qkv_bias=bool(model.qkv_bias), hidden_act="gelu",
      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, drop_path_rate=0.0,
      use_absolute_embeddings=False, layer_norm_eps=float(model.layer_norm_eps),
      encoder_stride=int(model.patch_size) * 2 ** (len(model.depths) - 1),
      **hf_labels(model.num_classes))
  if v2:
    config["pretrained_window_sizes"] = [
        int(w) for w in model.pretrained_window_sizes][:len(model.depths)]
  return sd, config


__all__ = ["adapt_window_size", "hf_swin_to_vitjax", "swin_hf_snapshot"]
