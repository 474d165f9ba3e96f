"""MobileViT weights from Hugging Face transformers -> vitjax.

`hf_mobilevit_to_vitjax` reads `MobileViTForImageClassification` /
`MobileViTModel` state dicts (v1) into `vitjax.models.mobilevit.MobileViT`;
`hf_mobilevitv2_to_vitjax` reads `MobileViTV2ForImageClassification` /
`MobileViTV2Model` into `MobileViTV2` (its 1x1 convs over unfolded patches
become Dense layers; GroupNorm(1) weights map to flax GroupNorm).
Both return a `Converted` like the CNN importers of `vitjax.convert.cnn`:
variables = {'params', 'batch_stats'}; a different `num_classes` override
leaves the head out.

Widths, transformer widths and depths come from the tensors; the number of
heads, MLP ratio, patch size, activation and epsilons from the HF config
(`config=`, required: heads cannot be read from the weights). The separate
query / key / value projections are fused into vitjax's `qkv` Dense (order
q, k, v, heads-major inside each, as HF's view(B, N, H, d)).
"""

import numpy as np

from vitjax.convert.cnn import _NBT, _check_act, _finalize, _head, _state
from vitjax.convert.common import (ParamWriter, StateDict, conv_to_flax, count_indexed,
                                   layernorm_to_flax, linear_to_dense,
                                   read_json_config)
from vitjax.convert.registry import Converted, register_converter
from vitjax.errors import UserError

_WHAT = "HF MobileViT"


def _ir(out: ParamWriter, s: StateDict, name: str, p: str) -> int:
  """MobileViTInvertedResidual -> vitjax InvertedResidual; returns out width."""
  for ours, theirs in (("expand", "expand_1x1"), ("dwconv", "conv_3x3"),
                       ("project", "reduce_1x1")):
    out.conv_bn(f"{name}/{ours}", f"{p}.{theirs}.convolution",
                f"{p}.{theirs}.normalization")
  return out.params[f"{name}/project/bn/bias"].shape[0]


def _transformer_layer(out: ParamWriter, s: StateDict, name: str, p: str):
  a = f"{p}.attention.attention."
  w = np.concatenate([s.take(a + n + ".weight") for n in ("query", "key", "value")], 0)
  b = np.concatenate([s.take(a + n + ".bias") for n in ("query", "key", "value")], 0)
  out.put(f"{name}/attn/qkv", linear_to_dense(w, b))
  out.put(f"{name}/attn/proj", linear_to_dense(s.take(f"{p}.attention.output.dense.weight"),
                                               s.take(f"{p}.attention.output.dense.bias")))
  out.put(f"{name}/norm1", layernorm_to_flax(s.take(f"{p}.layernorm_before.weight"),
                                             s.take(f"{p}.layernorm_before.bias")))
  out.put(f"{name}/norm2", layernorm_to_flax(s.take(f"{p}.layernorm_after.weight"),
                                             s.take(f"{p}.layernorm_after.bias")))
  out.put(f"{name}/mlp/fc1", linear_to_dense(s.take(f"{p}.intermediate.dense.weight"),
                                             s.take(f"{p}.intermediate.dense.bias")))
  out.put(f"{name}/mlp/fc2", linear_to_dense(s.take(f"{p}.output.dense.weight"),
                                             s.take(f"{p}.output.dense.bias")))


def _expand_ratio(s: StateDict, p: str) -> float:
  """The MobileNetV2 expansion, from stage_0's expand conv (in -> hidden)."""
  w = s.sd[p + "encoder.layer.0.layer.0.expand_1x1.convolution.weight"]
  return float(w.shape[0]) / float(w.shape[1])


@register_converter(family="mobilevit", source="hf", model_types=("mobilevit",),
                    architectures=("MobileViTForImageClassification", "MobileViTModel"))
def hf_mobilevit_to_vitjax(src, config, **overrides) -> Converted:
  """HF MobileViT (v1) state dict -> Converted (MobileViT)."""
  cfg = read_json_config(config)
  if cfg is None:
    raise UserError(f"{_WHAT}: pass config= (the HF config.json, a dict or a "
                    "MobileViTConfig): the number of heads is not in the weights.")
  _check_act(cfg, "hidden_act", ("silu", "swish"), _WHAT)
  if cfg.get("output_stride", 32) != 32:
    raise UserError(f"{_WHAT}: output_stride={cfg['output_stride']} (dilated "
                    "segmentation backbone) is not supported; vitjax uses 32.")
  s, p = _state(src, _WHAT, "conv_stem.convolution.weight")
  out = ParamWriter(s, np.float32)
  out.conv_bn("stem", p + "conv_stem.convolution", p + "conv_stem.normalization")
  e = p + "encoder.layer."
  widths = [out.params["stem/bn/bias"].shape[0]]
  widths.append(_ir(out, s, "stage_0_block_0", e + "0.layer.0"))
  for j in range(3):
    w = _ir(out, s, f"stage_1_block_{j}", f"{e}1.layer.{j}")
  widths.append(w)
  dims, depths = [], []
  for i in range(3):
    q = f"{e}{i + 2}."
    name = f"stage_{i + 2}"
    widths.append(_ir(out, s, f"{name}_down", q + "downsampling_layer"))
    m = f"{name}_mobilevit"
    out.conv_bn(f"{m}/conv_kxk", q + "conv_kxk.convolution",
                q + "conv_kxk.normalization")
    w1 = s.take(q + "conv_1x1.convolution.weight")
    out.put(f"{m}/conv_1x1", conv_to_flax(w1))
    dims.append(w1.shape[0])
    depth = count_indexed(s.sd, rf"{q.replace('.', '[.]')}transformer[.]layer[.](\d+)[.]")
    depths.append(depth)
    for j in range(depth):
      _transformer_layer(out, s, f"{m}/transformer_{j}", f"{q}transformer.layer.{j}")
    out.put(f"{m}/norm", layernorm_to_flax(s.take(q + "layernorm.weight"),
                                           s.take(q + "layernorm.bias")))
    out.conv_bn(f"{m}/conv_proj", q + "conv_projection.convolution",
                q + "conv_projection.normalization")
    out.conv_bn(f"{m}/fusion", q + "fusion.convolution", q + "fusion.normalization")
  if not s.has(p + "conv_1x1_exp.convolution.weight"):
    raise UserError(f"{_WHAT}: no conv_1x1_exp (a MobileViTModel built with "
                    "expand_output=False); vitjax's MobileViT always has the head conv.")
  out.conv_bn("head_conv", p + "conv_1x1_exp.convolution",
              p + "conv_1x1_exp.normalization")
  widths.append(out.params["head_conv/bn/bias"].shape[0])
  num_classes = _head(out, s, "classifier.weight", "classifier.bias")
  s.finish(ignore=_NBT)
  kwargs = dict(
      num_classes=num_classes, widths=tuple(int(x) for x in widths),
      dims=tuple(int(x) for x in dims), depths=tuple(depths),
      num_heads=int(cfg.get("num_attention_heads", 4)),
      expand_ratio=float(cfg.get("expand_ratio", _expand_ratio(s, p))),
      mlp_ratio=float(cfg.get("mlp_ratio", 2.0)),
      patch_size=int(cfg.get("patch_size", 2)),
      ln_eps=float(cfg.get("layer_norm_eps", 1e-5)))
  if cfg.get("conv_kernel_size", 3) != 3:
    raise UserError(f"{_WHAT}: conv_kernel_size={cfg['conv_kernel_size']} is not "
                    "supported (vitjax uses 3).")
  if not cfg.get("qkv_bias", True):
    raise UserError(f"{_WHAT}: qkv_bias=False is not supported.")
  from vitjax.models.mobilevit import MobileViT  # pylint: disable=g-import-not-at-top
  return _finalize(out, kwargs, overrides, _WHAT, MobileViT)


# ----------------------------------------------------------------------------
# MobileViT v2.

_WHAT2 = "HF MobileViTV2"


def _conv1x1_dense(s: StateDict, p: str):
  """A 1x1 torch conv with bias -> a flax Dense over channels."""
  w = s.take(p + ".weight")
  return linear_to_dense(w.reshape(w.shape[0], w.shape[1]), s.take(p + ".bias"))


@register_converter(family="mobilevitv2", source="hf", model_types=("mobilevitv2",),
                    architectures=("MobileViTV2ForImageClassification", "MobileViTV2Model"))
def hf_mobilevitv2_to_vitjax(src, config, **overrides) -> Converted:
  """HF MobileViTV2 state dict -> Converted (MobileViTV2).

  The width multiplier, FFN multiplier and expansion come from the config
  (required); the transformer depths from the weights.
  """
  cfg = read_json_config(config)
  if cfg is None:
    raise UserError(f"{_WHAT2}: pass config= (the HF config.json, a dict or a "
                    "MobileViTV2Config): the width multiplier is not in the weights.")
  _check_act(cfg, "hidden_act", ("swish", "silu"), _WHAT2)
  for key, want in (("output_stride", 32), ("conv_kernel_size", 3),
                    ("base_attn_unit_dims", [128, 192, 256])):
    got = cfg.get(key, want)
    if (list(got) if isinstance(got, (list, tuple)) else got) != want:
      raise UserError(f"{_WHAT2}: {key}={got!r} is not supported (vitjax uses {want}).")
  s, p = _state(src, _WHAT2, "conv_stem.convolution.weight")
  out = ParamWriter(s, np.float32)
  out.conv_bn("stem", p + "conv_stem.convolution", p + "conv_stem.normalization")
  e = p + "encoder.layer."
  _ir(out, s, "stage_0_block_0", e + "0.layer.0")
  for j in range(2):
    _ir(out, s, f"stage_1_block_{j}", f"{e}1.layer.{j}")
  depths = []
  for i in range(3):
    q = f"{e}{i + 2}."
    name = f"stage_{i + 2}"
    _ir(out, s, f"{name}_down", q + "downsampling_layer")
    m = f"{name}_mobilevit"
    out.conv_bn(f"{m}/conv_kxk", q + "conv_kxk.convolution", q + "conv_kxk.normalization")
    out.put(f"{m}/conv_1x1", conv_to_flax(s.take(q + "conv_1x1.convolution.weight")))
    depth = count_indexed(s.sd, rf"{q.replace('.', '[.]')}transformer[.]layer[.](\d+)[.]")
    depths.append(depth)
    for j in range(depth):
      t, n = f"{q}transformer.layer.{j}.", f"{m}/transformer_{j}"
      for ours, theirs in (("norm1", "layernorm_before"), ("norm2", "layernorm_after")):
        out.put(f"{n}/{ours}", layernorm_to_flax(s.take(t + theirs + ".weight"),
                                                 s.take(t + theirs + ".bias")))
      out.put(f"{n}/attn/qkv", _conv1x1_dense(s, t + "attention.qkv_proj.convolution"))
      out.put(f"{n}/attn/proj", _conv1x1_dense(s, t + "attention.out_proj.convolution"))
      out.put(f"{n}/mlp/fc1", _conv1x1_dense(s, t + "ffn.conv1.convolution"))
      out.put(f"{n}/mlp/fc2", _conv1x1_dense(s, t + "ffn.conv2.convolution"))
    out.put(f"{m}/norm", layernorm_to_flax(s.take(q + "layernorm.weight"),
                                           s.take(q + "layernorm.bias")))
    out.conv_bn(f"{m}/conv_proj", q + "conv_projection.convolution",
                q + "conv_projection.normalization")
  num_classes = _head(out, s, "classifier.weight", "classifier.bias")
  s.finish(ignore=_NBT)
  kwargs = dict(
      num_classes=num_classes, width_mult=float(cfg.get("width_multiplier", 1.0)),
      depths=tuple(depths), expand_ratio=float(cfg.get("expand_ratio", 2.0)),
      ffn_multiplier=float(cfg.get("ffn_multiplier", 2.0)),
      patch_size=int(cfg.get("patch_size", 2)),
      ln_eps=float(cfg.get("layer_norm_eps", 1e-5)))
  stem = out.params["stem/bn/bias"].shape[0]
  from vitjax.models.mobilevit import MobileViTV2  # pylint: disable=g-import-not-at-top
  want = MobileViTV2(width_mult=kwargs["width_mult"]).widths()[0]
  if stem != want:
    raise UserError(f"{_WHAT2}: the stem has {stem} channels but width_multiplier="
                    f"{kwargs['width_mult']} gives {want}: config and weights disagree.")
  return _finalize(out, kwargs, overrides, _WHAT2, MobileViTV2)
