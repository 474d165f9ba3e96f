"""Hybrid ViT (ResNet + ViT) weights from timm -> vitjax.

`timm_vit_hybrid_to_vitjax(state_dict, num_heads=..., **overrides)` converts a
timm `VisionTransformer` with a `HybridEmbed` over a `ResNetV2` backbone
(vit_small_r26_s32_*, vit_base_r50_s16_*, ...) and returns a `Converted`
(variables {'params'}, model name, kwargs) for
`vitjax.models.vit_hybrid.HybridVisionTransformer`.
Mapping (timm -> vitjax), with R = patch_embed.backbone:
  R.stem.conv / R.stem.norm            -> backbone/stem_conv / stem_norm/gn
  R.stages.{i}.blocks.{j}.conv{k} / .norm{k} -> backbone/stage_{i}_block_{j}/conv{k} / norm{k}/gn
  R.stages.{i}.blocks.{j}.downsample.conv / .norm -> .../downsample_conv / downsample_norm/gn
  everything else (patch_embed.proj, cls_token, pos_embed, blocks, norm, head)
    -> vit/..., converted by vitjax.convert.vit.timm_vit_to_vitjax
Stage depths and the stem width are read from the weights; num_heads is
required (timm state dicts do not record it). image_size defaults to the
position embeddings' grid times the backbone stride.
"""

import math

import numpy as np

from vitjax.convert.common import (ParamWriter, StateDict, cast_params, count_indexed,
                                   load_state_dict, unflatten_params)
from vitjax.convert.registry import Converted, converted, register_converter
from vitjax.convert.vit import timm_vit_to_vitjax
from vitjax.errors import UserError

WHAT = "timm hybrid ViT"
BACKBONE = "patch_embed.backbone."


@register_converter(family="vit_hybrid", source="timm")
def timm_vit_hybrid_to_vitjax(state_dict, *, num_heads=None, param_dtype=np.float32,
                              **overrides) -> Converted:
  """timm hybrid ViT state dict -> Converted (HybridVisionTransformer)."""
  sd = load_state_dict(state_dict)
  if BACKBONE + "stem.conv.weight" not in sd:
    raise UserError(f"Not a {WHAT} state dict: no {BACKBONE}stem.conv.weight (a ResNetV2 "
                    "backbone). Plain ViTs load with vitjax.convert.timm_vit_to_vitjax.")
  s = StateDict({k[len(BACKBONE):]: v for k, v in sd.items() if k.startswith(BACKBONE)}, WHAT)
  wr = ParamWriter(s)  # the backbone's convs have no bias; its norms are GroupNorms

  wr.conv("backbone/stem_conv", "stem.conv", bias=False)
  wr.layernorm("backbone/stem_norm/gn", "stem.norm")
  stem_width = int(s.sd["stem.conv.weight"].shape[0])
  n_stages = count_indexed(s.sd, r"stages\.(\d+)\.")
  depths = tuple(count_indexed(s.sd, rf"stages\.{i}\.blocks\.(\d+)\.") for i in range(n_stages))
  for i, n in enumerate(depths):
    want = 256 * 2 ** i
    for j in range(n):
      p, t = f"stages.{i}.blocks.{j}.", f"stage_{i}_block_{j}/"
      if (j == 0) != s.has(p + "downsample.conv.weight"):
        raise UserError(f"{WHAT}: only the first block of a stage may (and must) have a "
                        f"downsample projection; {BACKBONE}{p} differs.")
      if j == 0:
        wr.conv(f"backbone/{t}downsample_conv", p + "downsample.conv", bias=False)
        wr.layernorm(f"backbone/{t}downsample_norm/gn", p + "downsample.norm")
        got = int(s.sd[p + "downsample.conv.weight"].shape[0])
        if got != want:
          raise UserError(f"{WHAT}: stage {i} is {got} wide; vitjax's backbone has "
                          f"256 * 2**i = {want} (width factor 1).")
      for k in (1, 2, 3):
        wr.conv(f"backbone/{t}conv{k}", p + f"conv{k}", bias=False)
        wr.layernorm(f"backbone/{t}norm{k}/gn", p + f"norm{k}")
  s.finish()

  rest = {k: v for k, v in sd.items() if not k.startswith(BACKBONE)}
  if "patch_embed.proj.weight" in rest and rest["patch_embed.proj.weight"].shape[2:] != (1, 1):
    raise UserError(f"{WHAT}: the embedding over the feature map must be 1x1 (patch_size=1), "
                    f"got {rest['patch_embed.proj.weight'].shape[2:]}.")
  vit_over = {k: overrides.pop(k) for k in ("num_classes", "pool", "representation_size")
              if k in overrides}
  vit = timm_vit_to_vitjax(rest, num_heads=num_heads, param_dtype=None, **vit_over)
  vit_params, vit_kwargs = vit.params, vit.model_kwargs
  for k in ("representation_size", "fc_norm", "distilled", "posemb"):
    bad = {"representation_size": None, "fc_norm": False, "distilled": False,
           "posemb": "learn"}[k]
    if vit_kwargs.get(k) != bad:
      raise UserError(f"{WHAT}: {k}={vit_kwargs.get(k)!r} is not supported by the hybrid model.")
  grid = vit_params["pos_embedding"].shape[1] - (vit_kwargs["pool"] == "cls")
  side = int(round(math.sqrt(grid)))
  stride = 4 * 2 ** (len(depths) - 1)
  params = unflatten_params(wr.params)
  params["vit"] = vit_params
  kwargs = dict(num_classes=vit_kwargs["num_classes"], image_size=side * stride,
                stage_depths=depths, stem_width=stem_width,
                hidden_size=vit_kwargs["hidden_size"], depth=vit_kwargs["depth"],
                num_heads=vit_kwargs["num_heads"], mlp_dim=vit_kwargs["mlp_dim"],
                pool=vit_kwargs["pool"], qkv_bias=vit_kwargs["qkv_bias"],
                layer_norm_eps=vit_kwargs["layer_norm_eps"])
  for k, v in overrides.items():
    if k in ("stage_depths", "stem_width", "hidden_size", "depth", "mlp_dim") and v != kwargs[k]:
      raise UserError(f"{WHAT}: the checkpoint has {k}={kwargs[k]!r}; it cannot be loaded "
                      f"into a model with {k}={v!r}.")
    kwargs[k] = v
  from vitjax.models.vit_hybrid import HybridVisionTransformer  # pylint: disable=g-import-not-at-top
  return converted({"params": cast_params(params, param_dtype)}, HybridVisionTransformer,
                   kwargs)
