"""CNN weights from Hugging Face transformers -> vitjax.

State dicts of `ResNetForImageClassification` / `ResNetModel`,
`ConvNextForImageClassification` / `ConvNextModel` and
`EfficientNetForImageClassification` / `EfficientNetModel` become flax
variables for the vitjax model of the same family.

Every importer returns a `Converted` (vitjax.convert.registry): `variables` is
{'params': ..., 'batch_stats': ...} (nested dicts of numpy arrays; no
'batch_stats' for ConvNeXt, which has no BatchNorm), to be used as
`create_model(model_name, **model_kwargs).apply(variables, x)` with x NHWC
(the same module as `Model(**model_kwargs)`). `model_kwargs` holds
what the checkpoint fixes (depths, widths, head size, ...) plus the caller's
overrides, which may set any other field (drop_path_rate, dtype, ...) or a
different `num_classes`: the head is then left out for the caller to
initialise (fine-tuning with a new label set).

Architecture facts that weights cannot tell (activations, epsilons, scaling
coefficients) come from the HF config (`config=`: a dict, a config.json path
or folder, or a PretrainedConfig); variants vitjax does not implement are
refused with a UserError rather than converted into a different network.

PyTorch BatchNorm (weight, bias, running_mean, running_var) maps to flax
params (scale, bias) and batch_stats (mean, var); `num_batches_tracked` is
dropped (flax does not count). Conv kernels go OIHW -> HWIO.

The registered exporters `resnet_hf_snapshot` and `convnext_hf_snapshot` go
the other way (BatchNorm running statistics included): a vitjax ResNet /
ConvNeXt -> the state dict of ResNet / ConvNext(ForImageClassification|Model)
and its config.json dict.
"""

from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from vitjax.convert.common import (ParamWriter, StateDict, TorchWriter, conv_to_flax,
                                   count_indexed, hf_labels,
                                   find_prefix, layernorm_to_flax,
                                   linear_to_dense, load_state_dict,
                                   read_json_config)
from vitjax.convert.registry import (Converted, converted, register_converter,
                                     register_exporter)
from vitjax.errors import UserError

_NBT = (r"num_batches_tracked$",)


def _state(src, what: str, model_prefix: str) -> Tuple[StateDict, str]:
  sd = load_state_dict(src)
  prefix = find_prefix(sd, model_prefix)
  if prefix is None:
    raise UserError(f"Not a {what} state dict: no tensor named like "
                    f"'{model_prefix}'. It has: {', '.join(sorted(sd)[:8])} ...")
  return StateDict(sd, what), prefix


def _head(out: ParamWriter, s: StateDict, weight: str, bias: str) -> int:
  """The classifier, if the state dict has one; returns num_classes (0: none)."""
  if s.has(weight):
    out.put("head", linear_to_dense(s.take(weight), s.take(bias)))
    return out.params["head/bias"].shape[0]
  return 0


def _finalize(out: ParamWriter, kwargs: Dict[str, Any], overrides: Mapping[str, Any],
              what: str, model_cls, with_stats: bool = True) -> Converted:
  fixed = dict(kwargs)
  for k, v in overrides.items():
    if k == "num_classes":
      if v != fixed["num_classes"]:
        for key in [k2 for k2 in out.params if k2.startswith("head/")]:
          del out.params[key]
      fixed["num_classes"] = v
    elif k in fixed and fixed[k] != v and not (
        isinstance(v, (list, tuple)) and tuple(v) == tuple(fixed[k] or ())):
      raise UserError(f"{what}: override {k}={v!r} contradicts the checkpoint "
                      f"({k}={fixed[k]!r}).")
    else:
      fixed[k] = v
  return converted(out.variables(with_stats), model_cls, fixed)


def _check_act(cfg: Optional[Dict[str, Any]], key: str, allowed, what: str):
  if cfg and cfg.get(key, allowed[0]) not in allowed:
    raise UserError(f"{what}: {key}={cfg[key]!r} is not supported (vitjax uses "
                    f"{allowed[0]}).")


# ----------------------------------------------------------------------------
# ResNet.

@register_converter(family="resnet", source="hf", model_types=("resnet",),
                    architectures=("ResNetForImageClassification", "ResNetModel"))
def hf_resnet_to_vitjax(src, config=None, **overrides) -> Converted:
  """HF ResNet(ForImageClassification|Model) -> Converted (ResNet).

  Block type, depths and widths are read from the weights. From the config
  (optional) only unsupported variants are checked: downsample_in_bottleneck
  (stride on the first 1x1, "v1"), downsample_in_first_stage, and an
  activation other than ReLU.
  """
  what = "Hugging Face ResNet"
  cfg = read_json_config(config)
  if cfg:
    if cfg.get("downsample_in_bottleneck") or cfg.get("downsample_in_first_stage"):
      raise UserError(f"{what}: downsample_in_bottleneck / downsample_in_first_stage "
                      "are not supported (vitjax ResNet strides on the 3x3 conv of "
                      "the first block of stages 2-4).")
    _check_act(cfg, "hidden_act", ("relu",), what)
  s, prefix = _state(src, what, "embedder.embedder.convolution.weight")
  out = ParamWriter(s, np.float32)
  out.conv_bn("stem", prefix + "embedder.embedder.convolution",
              prefix + "embedder.embedder.normalization")
  stem_width = out.params["stem/conv/kernel"].shape[-1]
  if out.params["stem/conv/kernel"].shape[0] != 7:
    raise UserError(f"{what}: the stem conv is not 7x7.")

  keys = [k[len(prefix):] for k in s.sd if k.startswith(prefix)]
  n_stages = count_indexed(keys, r"encoder\.stages\.(\d+)\.")
  if not n_stages:
    raise UserError(f"{what}: no encoder stages.")
  bottleneck = s.has(prefix + "encoder.stages.0.layers.0.layer.2.convolution.weight")
  block = "bottleneck" if bottleneck else "basic"
  n_convs = 3 if bottleneck else 2
  depths, widths = [], []
  for i in range(n_stages):
    n = count_indexed(keys, rf"encoder\.stages\.{i}\.layers\.(\d+)\.")
    depths.append(n)
    for j in range(n):
      p = f"{prefix}encoder.stages.{i}.layers.{j}."
      name = f"stage_{i}_block_{j}"
      for c in range(n_convs):
        out.conv_bn(f"{name}/conv{c + 1}", p + f"layer.{c}.convolution",
                    p + f"layer.{c}.normalization")
      if s.has(p + "shortcut.convolution.weight"):
        out.conv_bn(f"{name}/downsample", p + "shortcut.convolution",
                    p + "shortcut.normalization")
    widths.append(out.params[f"stage_{i}_block_0/conv{n_convs}/conv/kernel"].shape[-1])
  num_classes = _head(out, s, "classifier.1.weight", "classifier.1.bias")
  s.finish(ignore=_NBT)
  kwargs = dict(num_classes=num_classes, block=block, stage_depths=tuple(depths),
                stage_widths=tuple(widths), stem_width=stem_width,
                width=widths[0] // (4 if bottleneck else 1), small_stem=False)
  from vitjax.models.resnet import ResNet  # pylint: disable=g-import-not-at-top
  return _finalize(out, kwargs, overrides, what, ResNet)


def _num_channels(variables, stem: str) -> int:
  return int(variables["params"][stem]["kernel"].shape[2]) if "kernel" in (
      variables["params"][stem]) else int(variables["params"][stem]["conv"]["kernel"].shape[2])


@register_exporter(family="resnet", models=("ResNet",))
def resnet_hf_snapshot(model, variables, image_size=224):
  """A vitjax ResNet -> (HF ResNet state dict with BatchNorm statistics, config).

  Refused: the small stem (3x3, no max-pool) and BatchNorm epsilons other
  than PyTorch's 1e-5, which HF ResNet does not have.
  """
  del image_size
  what = "Hugging Face ResNet"
  if model.small_stem:
    raise UserError(f"{what} has the 7x7/2 stem with max-pool; this model has small_stem=True.")
  if model.bn_eps != 1e-5:
    raise UserError(f"{what}'s BatchNorms use epsilon 1e-5; this model has bn_eps="
                    f"{model.bn_eps}.")
  block, depths, widths, stem_width = model.architecture()
  t = TorchWriter(variables)
  head = model.num_classes > 0
  p = "resnet." if head else ""
  t.conv_bn(p + "embedder.embedder.convolution", p + "embedder.embedder.normalization", "stem")
  n_convs = 3 if block == "bottleneck" else 2
  for i, n in enumerate(depths):
    for j in range(n):
      b, src = f"{p}encoder.stages.{i}.layers.{j}.", f"stage_{i}_block_{j}"
      for c in range(n_convs):
        t.conv_bn(b + f"layer.{c}.convolution", b + f"layer.{c}.normalization",
                  f"{src}/conv{c + 1}")
      if t.has(f"{src}/downsample"):
        t.conv_bn(b + "shortcut.convolution", b + "shortcut.normalization", f"{src}/downsample")
  if head:
    t.linear("classifier.1", "head")
  config = dict(
      model_type="resnet", architectures=["ResNetForImageClassification" if head else "ResNetModel"],
      num_channels=_num_channels(variables, "stem"), embedding_size=int(stem_width),
      hidden_sizes=[int(w) for w in widths], depths=[int(d) for d in depths],
      layer_type=block, hidden_act="relu", downsample_in_first_stage=False,
      downsample_in_bottleneck=False)
  return t.finish(what), {**config, **hf_labels(model.num_classes)}


# ----------------------------------------------------------------------------
# ConvNeXt.

@register_converter(family="convnext", source="hf", model_types=("convnext",),
                    architectures=("ConvNextForImageClassification", "ConvNextModel"))
def hf_convnext_to_vitjax(src, config=None, **overrides) -> Converted:
  """HF ConvNext(ForImageClassification|Model) -> Converted (ConvNeXt).

  Depths, widths, patch size and layer scale are read from the weights; the
  final LayerNorm's epsilon from the config (`layer_norm_eps`, 1e-12 for the
  HF checkpoints; default 1e-12 without a config). GELU only.
  """
  what = "Hugging Face ConvNeXt"
  cfg = read_json_config(config) or {}
  _check_act(cfg, "hidden_act", ("gelu",), what)
  s, prefix = _state(src, what, "embeddings.patch_embeddings.weight")
  out = ParamWriter(s, np.float32)
  stem = s.take(prefix + "embeddings.patch_embeddings.weight")
  if stem.shape[2] != stem.shape[3]:
    raise UserError(f"{what}: non-square patch embedding {stem.shape[2:]}.")
  out.put("stem_conv", conv_to_flax(stem, s.take(prefix + "embeddings.patch_embeddings.bias")))
  out.put("stem_norm", layernorm_to_flax(s.take(prefix + "embeddings.layernorm.weight"),
                                         s.take(prefix + "embeddings.layernorm.bias")))
  keys = [k[len(prefix):] for k in s.sd if k.startswith(prefix)]
  n_stages = count_indexed(keys, r"encoder\.stages\.(\d+)\.")
  depths, widths, layer_scale = [], [], False
  for i in range(n_stages):
    p = f"{prefix}encoder.stages.{i}."
    if i > 0:
      out.put(f"stage_{i}_downsample_norm", layernorm_to_flax(
          s.take(p + "downsampling_layer.0.weight"), s.take(p + "downsampling_layer.0.bias")))
      out.put(f"stage_{i}_downsample_conv", conv_to_flax(
          s.take(p + "downsampling_layer.1.weight"), s.take(p + "downsampling_layer.1.bias")))
    n = count_indexed(keys, rf"encoder\.stages\.{i}\.layers\.(\d+)\.")
    depths.append(n)
    for j in range(n):
      q, name = f"{p}layers.{j}.", f"stage_{i}_block_{j}"
      out.put(f"{name}/dwconv", conv_to_flax(s.take(q + "dwconv.weight"), s.take(q + "dwconv.bias")))
      out.put(f"{name}/norm", layernorm_to_flax(s.take(q + "layernorm.weight"),
                                                s.take(q + "layernorm.bias")))
      out.put(f"{name}/mlp/fc1", linear_to_dense(s.take(q + "pwconv1.weight"),
                                                 s.take(q + "pwconv1.bias")))
      out.put(f"{name}/mlp/fc2", linear_to_dense(s.take(q + "pwconv2.weight"),
                                                 s.take(q + "pwconv2.bias")))
      gamma = s.take(q + "layer_scale_parameter", optional=True)
      if gamma is not None:
        out.set(f"{name}/layer_scale", gamma)
        layer_scale = True
    s.check_missing()
    widths.append(out.params[f"stage_{i}_block_0/dwconv/kernel"].shape[-1] if n else 0)
  out.put("norm", layernorm_to_flax(s.take(prefix + "layernorm.weight"),
                                    s.take(prefix + "layernorm.bias")))
  num_classes = _head(out, s, "classifier.weight", "classifier.bias")
  s.finish()
  kwargs = dict(num_classes=num_classes, depths=tuple(depths), widths=tuple(widths),
                patch_size=int(stem.shape[2]), layer_scale_init=1e-6 if layer_scale else 0.0,
                head_norm_eps=float(cfg.get("layer_norm_eps", 1e-12)))
  from vitjax.models.convnext import ConvNeXt  # pylint: disable=g-import-not-at-top
  return _finalize(out, kwargs, overrides, what, ConvNeXt, with_stats=False)


@register_exporter(family="convnext", models=("ConvNeXt",))
def convnext_hf_snapshot(model, variables, image_size=224):
  """A vitjax ConvNeXt -> (HF ConvNext state dict, config.json dict)."""
  t = TorchWriter(variables)
  head = model.num_classes > 0
  p = "convnext." if head else ""
  t.conv(p + "embeddings.patch_embeddings", "stem_conv")
  t.layernorm(p + "embeddings.layernorm", "stem_norm")
  for i, n in enumerate(model.depths):
    s = f"{p}encoder.stages.{i}."
    if i > 0:
      t.layernorm(s + "downsampling_layer.0", f"stage_{i}_downsample_norm")
      t.conv(s + "downsampling_layer.1", f"stage_{i}_downsample_conv")
    for j in range(n):
      b, src = f"{s}layers.{j}.", f"stage_{i}_block_{j}"
      t.conv(b + "dwconv", f"{src}/dwconv")
      t.layernorm(b + "layernorm", f"{src}/norm")
      t.linear(b + "pwconv1", f"{src}/mlp/fc1")
      t.linear(b + "pwconv2", f"{src}/mlp/fc2")
      if model.layer_scale_init:
        t.tensor(b + "layer_scale_parameter", t.get(f"{src}/layer_scale"))
  t.layernorm(p + "layernorm", "norm")
  if head:
    t.linear("classifier", "head")
  config = dict(
      model_type="convnext",
      architectures=["ConvNextForImageClassification" if head else "ConvNextModel"],
      num_channels=_num_channels(variables, "stem_conv"), patch_size=int(model.patch_size),
      num_stages=len(model.depths), hidden_sizes=[int(w) for w in model.widths],
      depths=[int(d) for d in model.depths], hidden_act="gelu",
      layer_scale_init_value=float(model.layer_scale_init), drop_path_rate=0.0,
      image_size=int(image_size), layer_norm_eps=float(model.head_norm_eps))
  return t.finish("Hugging Face ConvNeXt"), {**config, **hf_labels(model.num_classes)}


# ----------------------------------------------------------------------------
# EfficientNet.

@register_converter(family="efficientnet", source="hf", model_types=("efficientnet",),
                    architectures=("EfficientNetForImageClassification", "EfficientNetModel"))
def hf_efficientnet_to_vitjax(src, config, **overrides) -> Converted:
  """HF EfficientNet(ForImageClassification|Model) -> Converted (EfficientNet).

  `config` is required: the stage table (strides, kernels, expand ratios,
  repeats) and the scaling coefficients cannot be read from the flat list of
  blocks. Swish activation and mean pooling only.
  """
  what = "Hugging Face EfficientNet"
  cfg = read_json_config(config)
  if not cfg:
    raise UserError(f"{what}: pass config= (the model's config.json or EfficientNetConfig); "
                    "the block layout is not recoverable from the weights alone.")
  _check_act(cfg, "hidden_act", ("swish", "silu"), what)
  if cfg.get("pooling_type", "mean") != "mean":
    raise UserError(f"{what}: pooling_type={cfg['pooling_type']!r} is not supported (mean only).")
  cols = ("expand_ratios", "kernel_sizes", "strides", "in_channels", "out_channels",
          "num_block_repeats")
  blocks = tuple(tuple(int(v) for v in row) for row in zip(*(cfg[c] for c in cols)))
  kwargs = dict(width_mult=float(cfg["width_coefficient"]),
                depth_mult=float(cfg["depth_coefficient"]), blocks=blocks,
                divisor=int(cfg.get("depth_divisor", 8)),
                se_ratio=float(cfg.get("squeeze_expansion_ratio", 0.25)),
                depthwise_padding=tuple(int(i) for i in cfg.get("depthwise_padding", ())),
                bn_eps=float(cfg.get("batch_norm_eps", 1e-3)),
                dropout=float(cfg.get("dropout_rate", 0.2)))
  from vitjax.models.efficientnet import EfficientNet  # pylint: disable=g-import-not-at-top
  ref = EfficientNet(**kwargs)
  s, prefix = _state(src, what, "embeddings.convolution.weight")
  out = ParamWriter(s, np.float32)
  out.conv_bn("stem", prefix + "embeddings.convolution", prefix + "embeddings.batchnorm")
  k = 0
  for i, row in enumerate(blocks):
    for j in range(ref.round_repeats(row[5])):
      p, name = f"{prefix}encoder.blocks.{k}.", f"stage_{i}_block_{j}"
      if row[0] != 1:
        out.conv_bn(f"{name}/expand", p + "expansion.expand_conv", p + "expansion.expand_bn")
      out.conv_bn(f"{name}/dwconv", p + "depthwise_conv.depthwise_conv",
                  p + "depthwise_conv.depthwise_norm")
      for part in ("reduce", "expand"):
        out.put(f"{name}/se/{part}", conv_to_flax(s.take(p + f"squeeze_excite.{part}.weight"),
                                                 s.take(p + f"squeeze_excite.{part}.bias")))
      out.conv_bn(f"{name}/project", p + "projection.project_conv",
                  p + "projection.project_bn")
      k += 1
  s.check_missing()
  out.conv_bn("head_conv", prefix + "encoder.top_conv", prefix + "encoder.top_bn")
  head_width = out.params["head_conv/conv/kernel"].shape[-1]
  if head_width != ref.round_filters(1280):
    raise UserError(f"{what}: the top conv is {head_width} wide, not round_filters(1280)="
                    f"{ref.round_filters(1280)}; set hidden_dim accordingly.")
  num_classes = _head(out, s, "classifier.weight", "classifier.bias")
  s.finish(ignore=_NBT)
  kwargs["num_classes"] = num_classes
  return _finalize(out, kwargs, overrides, what, EfficientNet)
