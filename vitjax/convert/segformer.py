"""SegFormer weights from Hugging Face transformers -> vitjax.

`hf_segformer_to_vitjax(state_dict, config=None, **overrides)` converts a
`SegformerForSemanticSegmentation` state dict and returns `(params,
batch_stats, model_kwargs)` for `vitjax.models.segformer.SegFormer`
(batch_stats: the decoder's BatchNorm running statistics). Both the names of
transformers 5.x and the older names of the checkpoints on the Hub
(`encoder.block.{i}.{j}.attention.self.query`, `decode_head.linear_c.{i}`,
...) are read; the older ones are renamed first.

Mapping (transformers 5.x -> vitjax), with S = segformer.stages.{i}:
  S.patch_embeddings.proj / .layer_norm -> encoder/stage_{i}_patch_embed / _patch_embed_norm
  S.blocks.{j}                          -> encoder/stage_{i}_block_{j}
    layernorm_before / layernorm_after  -> norm1 / norm2
    attention.q_proj                    -> attn/q
    attention.k_proj + v_proj           -> attn/kv (fused [C, 2C], keys first)
    attention.sequence_reduction.sequence_reduction / .layer_norm -> attn/sr / attn/norm
    attention.o_proj                    -> attn/proj
    mlp.fc1 / mlp.dwconv.dwconv / mlp.fc2 -> mlp/fc1 / mlp/dwconv / mlp/fc2
  S.layer_norm                          -> encoder/stage_{i}_norm
  decode_head.linear_projections.{i}.proj -> decode_linear_{i}
  decode_head.linear_fuse / batch_norm  -> decode_fuse/conv / decode_fuse/bn
  decode_head.classifier                -> head

Widths, depths, kernel sizes, reductions, MLP ratios and the decoder width
are read from the weights; heads and strides from the config (defaults: the
released models' (1, 2, 5, 8) and (4, 2, 2, 2)).
"""

import re
from typing import Any, Dict, Tuple

import numpy as np

from vitjax.convert.common import (StateDict, cast_params, conv_to_flax, count_indexed,
                                   layernorm_to_flax, linear_to_dense, load_state_dict,
                                   read_json_config, unflatten_params)
from vitjax.errors import UserError

# Hub (transformers 4.x) names -> transformers 5.x names.
_LEGACY = [
    (r"encoder\.patch_embeddings\.(\d+)\.", r"stages.\1.patch_embeddings."),
    (r"encoder\.block\.(\d+)\.", r"stages.\1.blocks."),
    (r"encoder\.layer_norm\.(\d+)\.", r"stages.\1.layer_norm."),
    (r"attention\.self\.query\.", "attention.q_proj."),
    (r"attention\.self\.key\.", "attention.k_proj."),
    (r"attention\.self\.value\.", "attention.v_proj."),
    (r"attention\.self\.sr\.", "attention.sequence_reduction.sequence_reduction."),
    (r"attention\.self\.layer_norm\.", "attention.sequence_reduction.layer_norm."),
    (r"attention\.output\.dense\.", "attention.o_proj."),
    (r"mlp\.dense1\.", "mlp.fc1."),
    (r"mlp\.dense2\.", "mlp.fc2."),
    (r"\.layer_norm_1\.", ".layernorm_before."),
    (r"\.layer_norm_2\.", ".layernorm_after."),
    (r"decode_head\.linear_c\.", "decode_head.linear_projections."),
]


def _modern_names(sd):
  out = {}
  for k, v in sd.items():
    for pattern, repl in _LEGACY:
      k = re.sub(pattern, repl, k)
    out[k] = v
  return out


def hf_segformer_to_vitjax(state_dict, config=None, *, param_dtype=np.float32, **overrides
                           ) -> Tuple[Dict[str, Any], Dict[str, Any], Dict[str, Any]]:
  """HF Segformer state dict (+ optional config) -> (params, batch_stats, model_kwargs)."""
  what = "HF SegFormer"
  sd = _modern_names(load_state_dict(state_dict))
  cfg = read_json_config(config) or {}
  if "segformer.stages.0.patch_embeddings.proj.weight" not in sd:
    raise UserError(f"Not a {what} (SegformerForSemanticSegmentation) state dict: no tensor "
                    "named segformer.stages.0.patch_embeddings.proj.weight (or the older "
                    "segformer.encoder.patch_embeddings.0.proj.weight).")
  if "decode_head.classifier.weight" not in sd:
    raise UserError(f"{what}: no decode_head.* tensors; this converter needs a "
                    "SegformerForSemanticSegmentation checkpoint (encoder + decoder).")
  s = StateDict(sd, what, "")
  flat, stats = {}, {}

  def put(name, tree):
    for k, v in tree.items():
      flat[f"{name}/{k}"] = v

  def dense(dst, src):
    w = s.take(src + ".weight")
    put(dst, linear_to_dense(w, s.take(src + ".bias", optional=True)))
    return w

  def conv(dst, src):
    w = s.take(src + ".weight")
    put(dst, conv_to_flax(w, s.take(src + ".bias", optional=True)))
    return w

  def ln(dst, src):
    put(dst, layernorm_to_flax(s.take(src + ".weight"), s.take(src + ".bias")))

  num_stages = count_indexed(sd, r"segformer\.stages\.(\d+)\.")
  dims, depths, patch_sizes, srs, mlp_ratios = [], [], [], [], []
  for i in range(num_stages):
    S, E = f"segformer.stages.{i}.", f"encoder/stage_{i}"
    w = conv(f"{E}_patch_embed", S + "patch_embeddings.proj")
    ln(f"{E}_patch_embed_norm", S + "patch_embeddings.layer_norm")
    dims.append(int(w.shape[0]))
    patch_sizes.append(int(w.shape[2]))
    depth = count_indexed(sd, re.escape(S + "blocks.") + r"(\d+)\.")
    depths.append(depth)
    sr = 1
    for j in range(depth):
      p, t = S + f"blocks.{j}.", f"{E}_block_{j}"
      a = p + "attention."
      ln(f"{t}/norm1", p + "layernorm_before")
      ln(f"{t}/norm2", p + "layernorm_after")
      dense(f"{t}/attn/q", a + "q_proj")
      kw, vw = s.take(a + "k_proj.weight"), s.take(a + "v_proj.weight")
      kb, vb = s.take(a + "k_proj.bias"), s.take(a + "v_proj.bias")
      if kw is not None and vw is not None:
        put(f"{t}/attn/kv", linear_to_dense(np.concatenate([kw, vw]),
                                            None if kb is None else np.concatenate([kb, vb])))
      dense(f"{t}/attn/proj", a + "o_proj")
      if s.has(a + "sequence_reduction.sequence_reduction.weight"):
        sr = int(conv(f"{t}/attn/sr", a + "sequence_reduction.sequence_reduction").shape[2])
        ln(f"{t}/attn/norm", a + "sequence_reduction.layer_norm")
      w1 = dense(f"{t}/mlp/fc1", p + "mlp.fc1")
      conv(f"{t}/mlp/dwconv", p + "mlp.dwconv.dwconv")
      dense(f"{t}/mlp/fc2", p + "mlp.fc2")
      if j == 0 and w1 is not None:
        mlp_ratios.append(w1.shape[0] / w1.shape[1])
    srs.append(sr)
    ln(f"{E}_norm", S + "layer_norm")
  D = "decode_head."
  decoder_dim = None
  for i in range(num_stages):
    w = dense(f"decode_linear_{i}", D + f"linear_projections.{i}.proj")
    decoder_dim = int(w.shape[0]) if w is not None else decoder_dim
  conv("decode_fuse/conv", D + "linear_fuse")
  bn = D + "batch_norm."
  put("decode_fuse/bn", {"scale": s.take(bn + "weight"), "bias": s.take(bn + "bias")})
  stats["decode_fuse/bn/mean"] = s.take(bn + "running_mean")
  stats["decode_fuse/bn/var"] = s.take(bn + "running_var")
  cw = conv("head", D + "classifier")
  num_classes = int(cw.shape[0])
  s.finish(ignore=[r"\.num_batches_tracked$"])
  kwargs = dict(
      num_classes=num_classes, embed_dims=tuple(dims), depths=tuple(depths),
      num_heads=tuple(int(h) for h in cfg.get("num_attention_heads", (1, 2, 5, 8)[:num_stages])),
      mlp_ratios=tuple(mlp_ratios), sr_ratios=tuple(srs), patch_sizes=tuple(patch_sizes),
      strides=tuple(int(x) for x in cfg.get("strides", (4, 2, 2, 2)[:num_stages])),
      decoder_dim=decoder_dim, drop_path_rate=0.0)
  fixed = ("embed_dims", "depths", "mlp_ratios", "sr_ratios", "patch_sizes", "decoder_dim")
  for k in overrides:
    if k in fixed and overrides[k] != kwargs[k]:
      raise UserError(f"{what}: {k}={overrides[k]!r} contradicts the checkpoint "
                      f"({k}={kwargs[k]!r}); it cannot be overridden.")
  kwargs.update(overrides)
  if kwargs["num_classes"] != num_classes:  # a new head: left for the caller to initialise
    flat = {k: v for k, v in flat.items() if not k.startswith("head/")}
  params = cast_params(unflatten_params(flat), param_dtype)
  batch_stats = cast_params(unflatten_params(stats), param_dtype)
  return params, batch_stats, kwargs


__all__ = ["hf_segformer_to_vitjax"]
