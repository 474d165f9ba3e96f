"""ViT / DeiT weights: Hugging Face transformers and timm <-> vitjax.

Importers return a `Converted` (vitjax.convert.registry): `variables`
{'params': nested dict of numpy arrays} for
`VisionTransformer(**model_kwargs).apply(variables, x)` (x NHWC), the
registered `model_name` and `model_kwargs`, which hold everything the
checkpoint fixes (widths, depth, heads, patch size, pooling, distillation,
head size, LayerNorm epsilon) plus the caller's overrides.

Overrides (keyword arguments) may set any other VisionTransformer field
(dropout, drop_path_rate, dtype, remat, ...). They may not contradict the
checkpoint's architecture, with two exceptions made for fine-tuning:
- `num_classes=n` different from the checkpoint's: the classifier ('head',
  and 'head_dist' for DeiT) is left out of `params`; the caller initialises
  it (as for any fine-tuning with a new label set).
- `representation_size=None` (or 0) drops a checkpoint's pre-logits layer
  (HF's pooler / timm's pre_logits.fc), as the ViT paper does to fine-tune.

`num_heads` cannot be read from weights: HF takes it from the model's
config.json (`config=`), timm needs it as an override (`num_heads=...`).

The learned position embedding keeps the checkpoint's resolution;
`native_image_size` gives it. Resample it (vitjax.models.layers.resample_posemb)
to use another input size.

Exporters (`vitjax_to_timm_vit`, `vitjax_to_hf_vit` + `hf_vit_config`) go the
other way and give state dicts of numpy arrays.
"""

import dataclasses
import math
import re
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from vitjax.convert.common import (ParamWriter, StateDict, cast_params, conv_to_flax,
                                   conv_to_torch, count_indexed, dense_to_linear,
                                   find_prefix, flatten_params, layernorm_to_flax,
                                   layernorm_to_torch, linear_to_dense,
                                   load_state_dict, put_torch, read_json_config,
                                   unflatten_params)
from vitjax.convert.registry import (Converted, converted, register_converter,
                                     register_exporter)
from vitjax.errors import UserError

# Fields the checkpoint's weights fix: an override may not change them.
_STRUCTURAL = ("hidden_size", "depth", "mlp_dim", "patch_size", "pool", "posemb",
               "fc_norm", "distilled", "qkv_bias")
_HEADS_HINT = ("the usual values are ViT-Ti 3, S 6, B 12, L 16, H 16 heads "
               "(64-wide heads, 80 for H)")

# Per-layer tensor names of HF ViT/DeiT: transformers < 5 (and the files on
# the Hub) vs. transformers >= 5 module names.
_HF_LAYER_NAMES = {
    "legacy": dict(layer="encoder.layer.", q="attention.attention.query",
                   k="attention.attention.key", v="attention.attention.value",
                   o="attention.output.dense", ln1="layernorm_before",
                   ln2="layernorm_after", fc1="intermediate.dense",
                   fc2="output.dense"),
    "v5": dict(layer="layers.", q="attention.q_proj", k="attention.k_proj",
               v="attention.v_proj", o="attention.o_proj", ln1="layernorm_before",
               ln2="layernorm_after", fc1="mlp.fc1", fc2="mlp.fc2"),
}


def _model_fields():
  from vitjax.models.vit import VisionTransformer  # pylint: disable=g-import-not-at-top
  return {f.name for f in dataclasses.fields(VisionTransformer)
          if f.name not in ("parent", "name")}


def _finalize(flat: Dict[str, np.ndarray], kwargs: Dict[str, Any],
              overrides: Mapping[str, Any], what: str, param_dtype
              ) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  """Applies `overrides` to the inferred `kwargs` (see the module docstring)."""
  fields = _model_fields()
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise UserError(f"Unknown VisionTransformer argument(s) {', '.join(unknown)}; "
                    f"valid: {', '.join(sorted(fields))}.")
  kwargs = dict(kwargs)
  for k, v in overrides.items():
    if k in _STRUCTURAL and v != kwargs[k]:
      raise UserError(f"{what}: the checkpoint has {k}={kwargs[k]!r}; it cannot be "
                      f"loaded into a model with {k}={v!r}.")
    if k == "num_heads" and kwargs.get("num_heads") not in (None, v):
      raise UserError(f"{what}: the checkpoint's config says num_heads="
                      f"{kwargs['num_heads']}, not {v}.")
    if k == "representation_size" and v != kwargs[k]:
      if v:
        raise UserError(f"{what}: the checkpoint has representation_size="
                        f"{kwargs[k]!r}, not {v!r}.")
      for key in [n for n in flat if n.startswith("pre_logits/")]:
        del flat[key]
    if k == "num_classes" and v != kwargs[k]:
      for key in [n for n in flat if n.startswith(("head/", "head_dist/"))]:
        del flat[key]
    kwargs[k] = v
  if kwargs.get("num_heads") is None:
    raise UserError(f"{what}: the number of attention heads cannot be read from "
                    f"the weights; pass num_heads=... ({_HEADS_HINT}).")
  if kwargs["hidden_size"] % kwargs["num_heads"]:
    raise UserError(f"{what}: width {kwargs['hidden_size']} is not divisible by "
                    f"num_heads={kwargs['num_heads']}.")
  return cast_params(unflatten_params(flat), param_dtype), kwargs


def _converted(params, kwargs) -> Converted:
  from vitjax.models.vit import VisionTransformer  # pylint: disable=g-import-not-at-top
  return converted({"params": params}, VisionTransformer, kwargs)


def _square_patch(kernel_oihw, what):
  ph, pw = kernel_oihw.shape[2:]
  if ph != pw:
    raise UserError(f"{what}: non-square patches {ph}x{pw} are not supported.")
  return int(ph)


def _grid_side(n: int) -> Optional[int]:
  side = int(round(math.sqrt(n)))
  return side if side * side == n else None


# ----------------------------------------------------------------------------
# Hugging Face transformers.

@register_converter(
    family="vit", source="hf", model_types=("vit", "deit"),
    architectures=("ViTForImageClassification", "ViTModel", "DeiTForImageClassification",
                   "DeiTForImageClassificationWithTeacher", "DeiTModel"))
def hf_vit_to_vitjax(state_dict, config=None, *, param_dtype=np.float32,
                     **overrides) -> Converted:
  """Converts a Hugging Face ViT / DeiT state dict to vitjax.

  Handles ViTForImageClassification and ViTModel ('vit.' prefix or none,
  optional pooler -> `representation_size`, used only when there is no
  classifier, as in HF), DeiTForImageClassificationWithTeacher ('deit.',
  cls_classifier + distillation_classifier -> distilled=True), and
  DeiTForImageClassification (one classifier on the class token; imported as
  distilled=True with the head doubled and a zero 'head_dist', which computes
  exactly HF's logits), in both the Hub / transformers 4 and the
  transformers 5 tensor names.

  state_dict: a path (see `load_state_dict`) or a mapping of arrays/tensors.
  config: the HF config (dict, config.json path, or PretrainedConfig); gives
    num_heads and layer_norm_eps (without it: num_heads=... is required and
    layer_norm_eps defaults to HF's 1e-12).
  """
  what = "Hugging Face ViT/DeiT"
  sd = load_state_dict(state_dict)
  cfg = read_json_config(config) or {}
  prefix = find_prefix(sd, "embeddings.patch_embeddings.projection.weight")
  if prefix is None:
    raise UserError(f"Not a {what} state dict: no tensor named "
                    f"[vit.|deit.]embeddings.patch_embeddings.projection.weight. "
                    f"It has: {', '.join(sorted(sd)[:8])}{', ...' if len(sd) > 8 else ''}.")
  head_prefix = prefix[:prefix.rstrip(".").rfind(".") + 1] if prefix else ""
  layout = "legacy" if any(k.startswith(prefix + "encoder.layer.") for k in sd) else "v5"
  names = _HF_LAYER_NAMES[layout]
  depth = count_indexed(sd, re.escape(prefix + names["layer"]) + r"(\d+)\.")
  if not depth:
    raise UserError(f"Not a {what} state dict: it has no transformer layers "
                    f"({prefix}encoder.layer.<i>.* or {prefix}layers.<i>.*).")
  if cfg.get("hidden_act", "gelu") != "gelu":
    raise UserError(f"{what}: hidden_act={cfg['hidden_act']!r} is not supported; "
                    "vitjax's ViT uses the exact (erf) GELU, HF's 'gelu'.")

  s = StateDict(sd, what)
  wr = ParamWriter(s)
  flat = wr.params

  e = prefix + "embeddings."
  w = s.take(e + "patch_embeddings.projection.weight")
  b = s.take(e + "patch_embeddings.projection.bias")
  wr.put("patch_embed/proj", conv_to_flax(w, b))
  d = w.shape[0]
  flat["cls_token"] = s.take(e + "cls_token", shape=(1, 1, d))
  dist = s.take(e + "distillation_token", optional=True, shape=(1, 1, d))
  if dist is not None:
    flat["dist_token"] = dist
  flat["pos_embedding"] = s.take(e + "position_embeddings")

  mlp_dim, qkv_bias = None, True
  for i in range(depth):
    p = f"{prefix}{names['layer']}{i}."
    wr.put(f"block_{i}/norm1", layernorm_to_flax(s.take(p + names["ln1"] + ".weight"),
                                              s.take(p + names["ln1"] + ".bias")))
    qw = [s.take(f"{p}{names[c]}.weight") for c in "qkv"]
    qb = [s.take(f"{p}{names[c]}.bias", optional=True) for c in "qkv"]
    qkv_bias = qb[0] is not None
    if all(x is not None for x in qw) and (not qkv_bias or all(x is not None for x in qb)):
      wr.put(f"block_{i}/attn/qkv", linear_to_dense(
          np.concatenate(qw, 0), np.concatenate(qb, 0) if qkv_bias else None))
    elif qkv_bias:
      s.missing += [f"{p}{names[c]}.bias" for c, x in zip("qkv", qb) if x is None]
    wr.put(f"block_{i}/attn/proj", linear_to_dense(s.take(p + names["o"] + ".weight"),
                                                s.take(p + names["o"] + ".bias")))
    wr.put(f"block_{i}/norm2", layernorm_to_flax(s.take(p + names["ln2"] + ".weight"),
                                              s.take(p + names["ln2"] + ".bias")))
    fc1 = s.take(p + names["fc1"] + ".weight")
    wr.put(f"block_{i}/mlp/fc1", linear_to_dense(fc1, s.take(p + names["fc1"] + ".bias")))
    wr.put(f"block_{i}/mlp/fc2", linear_to_dense(s.take(p + names["fc2"] + ".weight"),
                                              s.take(p + names["fc2"] + ".bias")))
    if fc1 is not None:
      mlp_dim = fc1.shape[0]
  wr.put("norm", layernorm_to_flax(s.take(prefix + "layernorm.weight"),
                                s.take(prefix + "layernorm.bias")))
  s.check_missing()

  ignore = [re.escape(e + "mask_token") + "$"]
  num_classes, representation_size = 0, None
  if s.has(head_prefix + "cls_classifier.weight"):  # DeiT with teacher head
    if dist is None:
      raise UserError(f"{what}: cls_classifier without a distillation token.")
    wr.put("head", linear_to_dense(s.take(head_prefix + "cls_classifier.weight"),
                                s.take(head_prefix + "cls_classifier.bias")))
    wr.put("head_dist", linear_to_dense(s.take(head_prefix + "distillation_classifier.weight"),
                                     s.take(head_prefix + "distillation_classifier.bias")))
    num_classes = flat["head/bias"].shape[0]
  elif s.has(head_prefix + "classifier.weight"):
    head = linear_to_dense(s.take(head_prefix + "classifier.weight"),
                           s.take(head_prefix + "classifier.bias"))
    num_classes = head["bias"].shape[0]
    if dist is not None:
      # DeiTForImageClassification: logits = classifier(class token). vitjax's
      # distilled model averages two heads: (2 W cls + 0 dist) / 2 == W cls.
      wr.put("head", {k: v * 2 for k, v in head.items()})
      wr.put("head_dist", {k: np.zeros_like(v) for k, v in head.items()})
    else:
      wr.put("head", head)
  if num_classes:
    ignore.append(re.escape(prefix + "pooler.dense."))  # HF classifiers skip it
  elif s.has(prefix + "pooler.dense.weight"):
    if cfg.get("pooler_act", "tanh") != "tanh" and overrides.get("representation_size", 1):
      raise UserError(f"{what}: pooler_act={cfg['pooler_act']!r} is not supported "
                      "(only tanh); pass representation_size=None to drop the pooler.")
    wr.put("pre_logits", linear_to_dense(s.take(prefix + "pooler.dense.weight"),
                                      s.take(prefix + "pooler.dense.bias")))
    representation_size = flat["pre_logits/bias"].shape[0]
  s.finish(ignore=ignore)

  kwargs = dict(
      num_classes=num_classes, patch_size=_square_patch(w, what), hidden_size=d,
      depth=depth, num_heads=cfg.get("num_attention_heads"), mlp_dim=mlp_dim,
      pool="cls", posemb="learn", fc_norm=False, distilled=dist is not None,
      representation_size=representation_size, qkv_bias=qkv_bias,
      layer_norm_eps=float(cfg.get("layer_norm_eps", 1e-12)))
  return _converted(*_finalize(flat, kwargs, overrides, what, param_dtype))


def _unwrap(params) -> Dict[str, Any]:
  flat = flatten_params(params)
  if flat and all(k.startswith("params/") for k in flat):
    flat = {k[len("params/"):]: v for k, v in flat.items()}
  return {k: np.asarray(v) for k, v in flat.items()}


def _vitjax_depth(flat):
  depth = count_indexed(flat, r"block_(\d+)/")
  if not depth or "patch_embed/proj/kernel" not in flat:
    raise UserError("Not vitjax VisionTransformer params: no patch_embed/proj or "
                    "block_<i> entries.")
  return depth


def vitjax_to_hf_vit(params, layout: str = "legacy") -> Dict[str, np.ndarray]:
  """vitjax ViT/DeiT params -> a Hugging Face state dict (numpy arrays).

  A distilled model gives DeiTForImageClassificationWithTeacher's layout, a
  class-token ViT ViTForImageClassification's; without a head, the bare
  ViTModel / DeiTModel's (with the pooler if there is a pre-logits layer).
  layout: 'legacy' (the Hub files and transformers < 5; transformers >= 5
  loads them with from_pretrained too) or 'v5' (the module names of
  transformers >= 5, for `model.load_state_dict`). Pair it with
  `hf_vit_config` to write a config.json.
  """
  if layout not in _HF_LAYER_NAMES:
    raise UserError(f"layout must be one of {sorted(_HF_LAYER_NAMES)}, got {layout!r}.")
  flat = _unwrap(params)
  depth = _vitjax_depth(flat)
  if "cls_token" not in flat:
    raise UserError("Hugging Face ViT has no global-average-pooling variant (this "
                    "model has no class token); export it with vitjax_to_timm_vit.")
  distilled = "dist_token" in flat
  has_head = "head/kernel" in flat
  if has_head and "pre_logits/kernel" in flat:
    raise UserError("Hugging Face ViT classifiers have no pre-logits layer; this "
                    "model has one (representation_size).")
  if has_head:
    prefix = "deit." if distilled else "vit."
  else:
    prefix = ""
  names = _HF_LAYER_NAMES[layout]
  out = {}
  used = set()
  def get(k):
    used.add(k)
    return flat[k]
  def sub(name):
    keys = [k for k in flat if k.startswith(name + "/")]
    used.update(keys)
    return {k[len(name) + 1:]: flat[k] for k in keys}

  e = prefix + "embeddings."
  out[e + "cls_token"] = get("cls_token")
  if distilled:
    out[e + "distillation_token"] = get("dist_token")
  out[e + "position_embeddings"] = get("pos_embedding")
  put_torch(out, e + "patch_embeddings.projection", *conv_to_torch(sub("patch_embed/proj")))
  for i in range(depth):
    p = f"{prefix}{names['layer']}{i}."
    put_torch(out, p + names["ln1"], *layernorm_to_torch(sub(f"block_{i}/norm1")))
    w, b = dense_to_linear(sub(f"block_{i}/attn/qkv"))
    for c, wc, bc in zip("qkv", np.split(w, 3, 0),
                         np.split(b, 3, 0) if b is not None else (None,) * 3):
      put_torch(out, p + names[c], np.ascontiguousarray(wc), bc)
    put_torch(out, p + names["o"], *dense_to_linear(sub(f"block_{i}/attn/proj")))
    put_torch(out, p + names["ln2"], *layernorm_to_torch(sub(f"block_{i}/norm2")))
    put_torch(out, p + names["fc1"], *dense_to_linear(sub(f"block_{i}/mlp/fc1")))
    put_torch(out, p + names["fc2"], *dense_to_linear(sub(f"block_{i}/mlp/fc2")))
  put_torch(out, prefix + "layernorm", *layernorm_to_torch(sub("norm")))
  if distilled and has_head:
    put_torch(out, "cls_classifier", *dense_to_linear(sub("head")))
    put_torch(out, "distillation_classifier", *dense_to_linear(sub("head_dist")))
  elif has_head:
    put_torch(out, "classifier", *dense_to_linear(sub("head")))
  elif "pre_logits/kernel" in flat:
    put_torch(out, "pooler.dense", *dense_to_linear(sub("pre_logits")))
  _check_all_used(flat, used, "Hugging Face ViT/DeiT")
  return out


def hf_vit_config(params, model_kwargs: Mapping[str, Any]) -> Dict[str, Any]:
  """The config.json dict for `vitjax_to_hf_vit(params)`."""
  kw = model_kwargs
  if kw.get("posemb", "learn") != "learn" or kw.get("pool", "cls") != "cls":
    raise UserError("Only learned-posemb class-token ViT/DeiT models map to Hugging Face.")
  flat = _unwrap(params)
  distilled = "dist_token" in flat
  image_size = native_image_size(params, model_kwargs)
  num_classes = flat["head/bias"].shape[0] if "head/bias" in flat else 0
  arch = ("DeiTForImageClassificationWithTeacher" if distilled else
          "ViTForImageClassification") if num_classes else (
              "DeiTModel" if distilled else "ViTModel")
  cfg = dict(
      model_type="deit" if distilled else "vit", architectures=[arch],
      hidden_size=int(kw["hidden_size"]), num_hidden_layers=int(kw["depth"]),
      num_attention_heads=int(kw["num_heads"]),
      intermediate_size=int(kw["mlp_dim"]), hidden_act="gelu",
      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
      layer_norm_eps=float(kw.get("layer_norm_eps", 1e-6)),
      image_size=image_size, patch_size=int(kw["patch_size"]),
      num_channels=int(flat["patch_embed/proj/kernel"].shape[2]),
      qkv_bias=bool(kw.get("qkv_bias", True)), encoder_stride=int(kw["patch_size"]))
  if num_classes:
    cfg["id2label"] = {str(i): f"LABEL_{i}" for i in range(num_classes)}
    cfg["label2id"] = {f"LABEL_{i}": i for i in range(num_classes)}
  if "pre_logits/bias" in flat:
    cfg["pooler_output_size"] = int(flat["pre_logits/bias"].shape[0])
    cfg["pooler_act"] = "tanh"
  return cfg


@register_exporter(family="vit", models=("VisionTransformer",))
def vit_hf_snapshot(model, variables, image_size=None):
  """A vitjax ViT / DeiT -> (HF state dict, config.json dict) for `export_hf`.

  The image size is the position embedding's (`image_size` is not used).
  Refused: per-block head counts (a pruned model) and stacked blocks
  (scan_blocks=True): Hugging Face ViT has neither.
  """
  del image_size
  if model.head_counts or model.scan_blocks:
    raise UserError("Hugging Face ViT has one head count for every block and one module "
                    "per block; this model has head_counts / scan_blocks set. Export a "
                    "model without them.")
  kwargs = {f.name: getattr(model, f.name) for f in dataclasses.fields(model)
            if f.name not in ("parent", "name")}
  params = variables["params"]
  return vitjax_to_hf_vit(params), hf_vit_config(params, kwargs)


# ----------------------------------------------------------------------------
# timm.

@register_converter(family="vit", source="timm")
def timm_vit_to_vitjax(state_dict, *, global_pool: Optional[str] = None,
                       param_dtype=np.float32, **overrides) -> Converted:
  """Converts a timm VisionTransformer / VisionTransformerDistilled state dict.

  Supported: class-token models (global_pool='token'), DeiT distilled ones
  (dist_token + head_dist), class_token=False models with global_pool='avg'
  (fc_norm -> vitjax fc_norm=True; or a final norm with fc_norm=False),
  qkv_bias=False, no_embed_class position embeddings (padded with zeros for
  the prefix tokens, which is the same computation), and the old
  representation layer (pre_logits.fc). Not supported (UserError): register
  tokens, layer scale, qk-norm, pre-norm (CLIP), attention pooling, and
  average pooling with a class token.

  num_heads=... is required (timm state dicts do not record it);
  layer_norm_eps defaults to timm's 1e-6. global_pool: timm's setting, needed
  only to disambiguate a class-token checkpoint that has an fc_norm.
  """
  what = "timm ViT/DeiT"
  sd = load_state_dict(state_dict)
  prefix = find_prefix(sd, "patch_embed.proj.weight")
  if prefix is None:
    raise UserError(f"Not a {what} state dict: no tensor named patch_embed.proj.weight. "
                    f"It has: {', '.join(sorted(sd)[:8])}{', ...' if len(sd) > 8 else ''}.")
  depth = count_indexed(sd, re.escape(prefix + "blocks.") + r"(\d+)\.")
  if not depth:
    raise UserError(f"Not a {what} state dict: it has no transformer blocks "
                    f"({prefix}blocks.<i>.*).")
  s = StateDict(sd, what, prefix)
  wr = ParamWriter(s)
  flat = wr.params

  w = s.take("patch_embed.proj.weight")
  wr.put("patch_embed/proj", conv_to_flax(w, s.take("patch_embed.proj.bias")))
  d = w.shape[0]
  cls = s.take("cls_token", optional=True, shape=(1, 1, d))
  dist = s.take("dist_token", optional=True, shape=(1, 1, d))
  if cls is not None:
    flat["cls_token"] = cls
  if dist is not None:
    if cls is None:
      raise UserError(f"{what}: a distillation token without a class token is not supported.")
    flat["dist_token"] = dist
  n_prefix = (cls is not None) + (dist is not None)

  has_fc_norm = s.has("fc_norm.weight")
  if cls is None:
    pool = "gap"
    if global_pool not in (None, "avg"):
      raise UserError(f"{what}: a model without class token pools with 'avg', "
                      f"not global_pool={global_pool!r}.")
  else:
    pool = "cls"
    if global_pool is None and has_fc_norm:
      raise UserError(
          f"{what}: this checkpoint has a class token and an fc_norm, as timm "
          "models with global_pool='avg' (e.g. MAE / BEiT fine-tunes) have. "
          "vitjax's ViT averages only without a class token, so it cannot run "
          "them; if the model pooled the class token, pass global_pool='token'.")
    if global_pool not in (None, "token"):
      raise UserError(f"{what}: global_pool={global_pool!r} with a class token is "
                      "not supported (vitjax pools the class token, or averages "
                      "when there is none).")

  pe = s.take("pos_embed")
  if pe is not None and n_prefix:
    n = pe.shape[1]
    if _grid_side(n - n_prefix) is None and _grid_side(n) is not None:
      # no_embed_class=True: the prefix tokens get no position embedding.
      pe = np.concatenate([np.zeros((1, n_prefix, d), pe.dtype), pe], axis=1)
  flat["pos_embedding"] = pe

  mlp_dim, qkv_bias = None, True
  for i in range(depth):
    p = f"blocks.{i}."
    wr.put(f"block_{i}/norm1", layernorm_to_flax(s.take(p + "norm1.weight"),
                                              s.take(p + "norm1.bias")))
    qb = s.take(p + "attn.qkv.bias", optional=True)
    qkv_bias = qb is not None
    wr.put(f"block_{i}/attn/qkv", linear_to_dense(s.take(p + "attn.qkv.weight"), qb))
    wr.put(f"block_{i}/attn/proj", linear_to_dense(s.take(p + "attn.proj.weight"),
                                                s.take(p + "attn.proj.bias")))
    wr.put(f"block_{i}/norm2", layernorm_to_flax(s.take(p + "norm2.weight"),
                                              s.take(p + "norm2.bias")))
    fc1 = s.take(p + "mlp.fc1.weight")
    wr.put(f"block_{i}/mlp/fc1", linear_to_dense(fc1, s.take(p + "mlp.fc1.bias")))
    wr.put(f"block_{i}/mlp/fc2", linear_to_dense(s.take(p + "mlp.fc2.weight"),
                                              s.take(p + "mlp.fc2.bias")))
    if fc1 is not None:
      mlp_dim = fc1.shape[0]

  fc_norm = False
  if has_fc_norm and pool == "gap":
    fc_norm = True
    wr.put("fc_norm", layernorm_to_flax(s.take("fc_norm.weight"), s.take("fc_norm.bias")))
  elif has_fc_norm:
    # Class-token pooling with norm=Identity and fc_norm on the pooled token:
    # LayerNorm acts per token, so this equals vitjax's final norm.
    wr.put("norm", layernorm_to_flax(s.take("fc_norm.weight"), s.take("fc_norm.bias")))
  else:
    wr.put("norm", layernorm_to_flax(s.take("norm.weight"), s.take("norm.bias")))

  representation_size = None
  if s.has("pre_logits.fc.weight"):
    wr.put("pre_logits", linear_to_dense(s.take("pre_logits.fc.weight"),
                                      s.take("pre_logits.fc.bias")))
    representation_size = flat["pre_logits/bias"].shape[0]
  num_classes = 0
  if s.has("head.weight"):
    wr.put("head", linear_to_dense(s.take("head.weight"), s.take("head.bias")))
    num_classes = flat["head/bias"].shape[0]
    if dist is not None:
      wr.put("head_dist", linear_to_dense(s.take("head_dist.weight"),
                                       s.take("head_dist.bias")))
  elif dist is not None and s.has("head_dist.weight"):
    raise UserError(f"{what}: head_dist without head.")
  s.finish()

  kwargs = dict(
      num_classes=num_classes, patch_size=_square_patch(w, what), hidden_size=d,
      depth=depth, num_heads=None, mlp_dim=mlp_dim, pool=pool, posemb="learn",
      fc_norm=fc_norm, distilled=dist is not None,
      representation_size=representation_size, qkv_bias=qkv_bias,
      layer_norm_eps=1e-6)
  return _converted(*_finalize(flat, kwargs, overrides, what, param_dtype))


def vitjax_to_timm_vit(params) -> Dict[str, np.ndarray]:
  """vitjax ViT/DeiT params -> a timm VisionTransformer state dict (numpy).

  The timm model to load it into: class_token=<has cls_token>,
  global_pool='token' or 'avg' (no class token), fc_norm=<has fc_norm>,
  qkv_bias=<has qkv bias>, and for DeiT distilled timm's
  VisionTransformerDistilled (deit_*_distilled_*); with a pre-logits layer
  the old timm layout (pre_logits.fc).
  """
  flat = _unwrap(params)
  depth = _vitjax_depth(flat)
  out, used = {}, set()
  def get(k):
    used.add(k)
    return flat[k]
  def sub(name):
    keys = [k for k in flat if k.startswith(name + "/")]
    used.update(keys)
    return {k[len(name) + 1:]: flat[k] for k in keys}

  for name, key in (("cls_token", "cls_token"), ("dist_token", "dist_token"),
                    ("pos_embedding", "pos_embed")):
    if name in flat:
      out[key] = get(name)
  put_torch(out, "patch_embed.proj", *conv_to_torch(sub("patch_embed/proj")))
  for i in range(depth):
    p = f"blocks.{i}."
    put_torch(out, p + "norm1", *layernorm_to_torch(sub(f"block_{i}/norm1")))
    put_torch(out, p + "attn.qkv", *dense_to_linear(sub(f"block_{i}/attn/qkv")))
    put_torch(out, p + "attn.proj", *dense_to_linear(sub(f"block_{i}/attn/proj")))
    put_torch(out, p + "norm2", *layernorm_to_torch(sub(f"block_{i}/norm2")))
    put_torch(out, p + "mlp.fc1", *dense_to_linear(sub(f"block_{i}/mlp/fc1")))
    put_torch(out, p + "mlp.fc2", *dense_to_linear(sub(f"block_{i}/mlp/fc2")))
  for name, key in (("norm", "norm"), ("fc_norm", "fc_norm")):
    if f"{name}/scale" in flat:
      put_torch(out, key, *layernorm_to_torch(sub(name)))
  for name, key in (("pre_logits", "pre_logits.fc"), ("head", "head"),
                    ("head_dist", "head_dist")):
    if f"{name}/kernel" in flat:
      put_torch(out, key, *dense_to_linear(sub(name)))
  _check_all_used(flat, used, "timm ViT/DeiT")
  return out


def _check_all_used(flat, used, target):
  rest = sorted(set(flat) - used)
  if rest:
    raise UserError(f"These params have no place in a {target} state dict: "
                    f"{', '.join(rest[:8])}{' ...' if len(rest) > 8 else ''}.")


# ----------------------------------------------------------------------------
# Checks.

def native_image_size(params, model_kwargs: Mapping[str, Any]) -> Optional[int]:
  """The (square) image size the learned position embedding was made for, or
  None when it is not square (or there is none)."""
  flat = _unwrap(params)
  if "pos_embedding" not in flat:
    return None
  n_prefix = ("cls_token" in flat) + ("dist_token" in flat)
  side = _grid_side(flat["pos_embedding"].shape[1] - n_prefix)
  return side * int(model_kwargs["patch_size"]) if side else None


def check_params(params, model_kwargs: Mapping[str, Any], image_size=None):
  """Raises UserError unless `params` fit VisionTransformer(**model_kwargs).

  image_size: an int or (height, width); default: `native_image_size`.
  Every converted tensor must exist with the same shape (compared with
  jax.eval_shape of model.init, no compute); only the classifier may be
  absent (see `num_classes` in the module docstring). Skipped (returns False)
  when no square input size is known.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from vitjax.models.vit import VisionTransformer  # pylint: disable=g-import-not-at-top
  image_size = image_size or native_image_size(params, model_kwargs)
  if not image_size:
    return False
  h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
  model = VisionTransformer(**model_kwargs)
  channels = _unwrap(params)["patch_embed/proj/kernel"].shape[2]
  x = jax.ShapeDtypeStruct((1, h, w, channels), jnp.float32)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), x)["params"]
  want = {k: tuple(v.shape) for k, v in flatten_params(shapes).items()}
  got = {k: tuple(v.shape) for k, v in _unwrap(params).items()}
  problems = [f"{k}: unexpected" for k in sorted(set(got) - set(want))]
  problems += [f"{k}: {got[k]} vs model {want[k]}" for k in sorted(set(got) & set(want))
               if got[k] != want[k]]
  problems += [f"{k}: missing" for k in sorted(set(want) - set(got))
               if not k.startswith(("head/", "head_dist/"))]
  if problems:
    raise UserError("Converted params do not fit VisionTransformer("
                    f"{dict(model_kwargs)}): " + "; ".join(problems[:8]))
  return True
