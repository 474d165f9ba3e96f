"""CrossViT weights from timm -> vitjax.

`timm_crossvit_to_vitjax(state_dict, num_heads=..., **overrides)` converts a
timm `CrossVit` state dict (numpy arrays, read without pickle by
`common.load_state_dict`) and returns a `Converted` (variables {'params'},
model name, kwargs) for `vitjax.models.crossvit.CrossViT`. Mapping (timm -> vitjax), B = blocks.{i}:
  patch_embed.{j}.proj                 -> patch_embed_{j}/proj
  patch_embed.{j}.proj.{0,2,4} (dagger) -> patch_embed_{j}/conv_{0,1,2}
  cls_token_{j}, pos_embed_{j}         -> same names (also the original
                                          checkpoints' cls_token.{j} / pos_embed.{j})
  B.blocks.{j}.{k}                     -> block_{i}/branch_{j}_block_{k}
                                          (norm1, attn.qkv, attn.proj, norm2, mlp.fc1/2)
  B.projs.{j}.{0,2} / B.revert_projs.{j}.{0,2} -> block_{i}/proj_{j} / revert_proj_{j}
                                                  (norm, fc)
  B.fusion.{j} (one layer) or B.fusion.{j}.{k} -> block_{i}/fusion_{j}_{k}
                                          (norm1, attn.wq/wk/wv/proj)
  norm.{j}, head.{j}                   -> norm_{j}, head_{j}
Widths, depths, MLP ratios, multi_conv, qkv bias and the number of classes are
read from the weights. Not in the weights: num_heads (required, per branch or
one int for all), and the input geometry: image_size (default 240) and
img_scale (default (1.0, 224/240)); the patch sizes follow from them and the
position embeddings' lengths.
"""

import math
import re

import numpy as np

from vitjax.convert.common import (ParamWriter, StateDict, cast_params, count_indexed,
                                   load_state_dict, unflatten_params)
from vitjax.convert.registry import Converted, converted, register_converter
from vitjax.errors import UserError

WHAT = "timm CrossViT"


@register_converter(family="crossvit", source="timm")
def timm_crossvit_to_vitjax(state_dict, *, num_heads=None, image_size: int = 240,
                            img_scale=(1.0, 224 / 240), param_dtype=np.float32,
                            **overrides) -> Converted:
  """timm CrossVit state dict -> Converted (CrossViT); see the module doc."""
  sd = dict(load_state_dict(state_dict))
  for k in list(sd):  # original (IBM) checkpoints: cls_token.0 -> cls_token_0
    m = re.fullmatch(r"(cls_token|pos_embed)\.(\d+)", k)
    if m:
      sd[f"{m.group(1)}_{m.group(2)}"] = sd.pop(k)
  n = count_indexed(sd, r"cls_token_(\d+)$")
  if n < 2 or "pos_embed_0" not in sd:
    raise UserError(f"Not a {WHAT} state dict: it needs cls_token_<j> / pos_embed_<j> for "
                    f"two branches; it has: {', '.join(sorted(sd)[:8])}.")
  if num_heads is None:
    raise UserError(f"{WHAT}: the number of attention heads cannot be read from the weights; "
                    "pass num_heads=(h_small, h_large) (timm's released models: width/32 "
                    "of the small branch for both, e.g. (3, 3) for crossvit_tiny_240).")
  heads = (int(num_heads),) * n if isinstance(num_heads, int) else tuple(map(int, num_heads))
  s = StateDict(sd, WHAT)
  wr = ParamWriter(s)
  flat = wr.params

  multi_conv = "patch_embed.0.proj.0.weight" in sd
  sizes = [int(image_size * sc) for sc in img_scale]
  if len(sizes) != n:
    raise UserError(f"{WHAT}: img_scale={tuple(img_scale)} needs {n} entries (branches).")
  dims, patch_sizes = [], []
  for j in range(n):
    if multi_conv:
      for c in range(3):
        w = wr.conv(f"patch_embed_{j}/conv_{c}", f"patch_embed.{j}.proj.{2 * c}", bias=None)
    else:
      w = wr.conv(f"patch_embed_{j}/proj", f"patch_embed.{j}.proj", bias=None)
    d = int(w.shape[0])
    dims.append(d)
    flat[f"cls_token_{j}"] = s.take(f"cls_token_{j}", shape=(1, 1, d))
    pe = s.take(f"pos_embed_{j}")
    flat[f"pos_embed_{j}"] = pe
    side = int(round(math.sqrt(pe.shape[1] - 1)))
    if side * side != pe.shape[1] - 1 or sizes[j] % side:
      raise UserError(f"{WHAT}: branch {j}'s position embedding has {pe.shape[1] - 1} patch "
                      f"positions, which do not tile a {sizes[j]} px input (image_size="
                      f"{image_size}, img_scale={tuple(img_scale)}); pass the image_size / "
                      "img_scale the model was trained with.")
    patch_sizes.append(sizes[j] // side)
    if not multi_conv and tuple(w.shape[2:]) != (patch_sizes[-1],) * 2:
      raise UserError(f"{WHAT}: branch {j} has {w.shape[2]} px patches but its position "
                      f"embedding implies {patch_sizes[-1]} px at image_size={image_size}.")

  num_blocks = count_indexed(sd, r"blocks\.(\d+)\.")
  branch_depths = [count_indexed(sd, rf"blocks\.0\.blocks\.{j}\.(\d+)\.") for j in range(n)]
  nested = "blocks.0.fusion.0.0.norm1.weight" in sd
  fusion_depth = count_indexed(sd, r"blocks\.0\.fusion\.0\.(\d+)\.") if nested else 1
  mlp_ratios, qkv_bias = [], True
  for i in range(num_blocks):
    b, t = f"blocks.{i}.", f"block_{i}/"
    for j in range(n):
      for k in range(branch_depths[j]):
        p, q = f"{b}blocks.{j}.{k}.", f"{t}branch_{j}_block_{k}/"
        wr.layernorm(q + "norm1", p + "norm1")
        qkv_bias = s.has(p + "attn.qkv.bias")
        wr.linear(q + "attn/qkv", p + "attn.qkv", bias=None)
        wr.linear(q + "attn/proj", p + "attn.proj", bias=None)
        wr.layernorm(q + "norm2", p + "norm2")
        w1 = wr.linear(q + "mlp/fc1", p + "mlp.fc1", bias=None)
        wr.linear(q + "mlp/fc2", p + "mlp.fc2", bias=None)
        if i == 0 and k == 0 and w1 is not None:
          mlp_ratios.append(w1.shape[0] / w1.shape[1])
      for name in ("proj", "revert_proj"):
        wr.layernorm(f"{t}{name}_{j}/norm", f"{b}{name}s.{j}.0")
        wr.linear(f"{t}{name}_{j}/fc", f"{b}{name}s.{j}.2", bias=None)
      for k in range(fusion_depth):
        p = f"{b}fusion.{j}.{k}." if nested else f"{b}fusion.{j}."
        wr.layernorm(f"{t}fusion_{j}_{k}/norm1", p + "norm1")
        for name in ("wq", "wk", "wv", "proj"):
          wr.linear(f"{t}fusion_{j}_{k}/attn/{name}", p + "attn." + name, bias=None)
  num_classes = 0
  for j in range(n):
    wr.layernorm(f"norm_{j}", f"norm.{j}")
    if s.has(f"head.{j}.weight"):
      w = wr.linear(f"head_{j}", f"head.{j}", bias=None)
      num_classes = int(w.shape[0])
  s.finish()
  if len(mlp_ratios) != n:
    raise UserError(f"{WHAT}: every branch needs at least one block in the first encoder.")

  kwargs = dict(num_classes=num_classes, image_size=int(image_size),
                img_scale=tuple(float(x) for x in img_scale), patch_sizes=tuple(patch_sizes),
                embed_dims=tuple(dims), num_heads=heads, mlp_ratios=tuple(mlp_ratios),
                num_blocks=num_blocks, branch_depths=tuple(branch_depths),
                fusion_depth=fusion_depth, multi_conv=multi_conv, qkv_bias=qkv_bias)
  for k, v in overrides.items():
    if k in kwargs and k not in ("num_classes",) and v != kwargs[k]:
      raise UserError(f"{WHAT}: the checkpoint has {k}={kwargs[k]!r}; it cannot be loaded "
                      f"into a model with {k}={v!r}.")
    if k == "num_classes" and v != num_classes:
      flat = {a: x for a, x in flat.items() if not a.startswith("head_")}
    kwargs[k] = v
  from vitjax.models.crossvit import CrossViT  # pylint: disable=g-import-not-at-top
  return converted({"params": cast_params(unflatten_params(flat), param_dtype)}, CrossViT,
                   kwargs)
