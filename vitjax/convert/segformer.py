"""SegFormer weights from Hugging Face transformers -> vitjax.

`hf_segformer_to_vitjax(state_dict, config=None, **overrides)` converts a
`SegformerForSemanticSegmentation` state dict and returns a `Converted` for
`vitjax.models.segformer.SegFormer` (variables {'params', 'batch_stats'};
batch_stats: the decoder's BatchNorm running statistics). Both the names of
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

`segformer_hf_snapshot` (registered exporter) goes the other way: a vitjax
SegFormer -> a SegformerForSemanticSegmentation state dict in the Hub's
(transformers 4) names, which transformers 5 renames on load, with the
decoder's BatchNorm statistics, and its config.json dict.
"""

import re

import numpy as np

from vitjax.convert.common import (ParamWriter, StateDict, TorchWriter, cast_params,
                                   count_indexed, hf_labels,
                                   linear_to_dense, load_state_dict, read_json_config,
                                   unflatten_params)
from vitjax.convert.registry import (Converted, converted, register_converter,
                                     register_exporter)
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


@register_converter(family="segformer", source="hf", model_types=("segformer",),
                    architectures=("SegformerForSemanticSegmentation",))
def hf_segformer_to_vitjax(state_dict, config=None, *, param_dtype=np.float32, **overrides
                           ) -> Converted:
  """HF Segformer state dict (+ optional config) -> Converted (SegFormer)."""
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
  wr = ParamWriter(s)
  flat = wr.params

  num_stages = count_indexed(sd, r"segformer\.stages\.(\d+)\.")
  dims, depths, patch_sizes, srs, mlp_ratios = [], [], [], [], []
  for i in range(num_stages):
    S, E = f"segformer.stages.{i}.", f"encoder/stage_{i}"
    w = wr.conv(f"{E}_patch_embed", S + "patch_embeddings.proj", bias=None)
    wr.layernorm(f"{E}_patch_embed_norm", S + "patch_embeddings.layer_norm")
    dims.append(int(w.shape[0]))
    patch_sizes.append(int(w.shape[2]))
    depth = count_indexed(sd, re.escape(S + "blocks.") + r"(\d+)\.")
    depths.append(depth)
    sr = 1
    for j in range(depth):
      p, t = S + f"blocks.{j}.", f"{E}_block_{j}"
      a = p + "attention."
      wr.layernorm(f"{t}/norm1", p + "layernorm_before")
      wr.layernorm(f"{t}/norm2", p + "layernorm_after")
      wr.linear(f"{t}/attn/q", a + "q_proj", bias=None)
      kw, vw = s.take(a + "k_proj.weight"), s.take(a + "v_proj.weight")
      kb, vb = s.take(a + "k_proj.bias"), s.take(a + "v_proj.bias")
      if kw is not None and vw is not None:
        wr.put(f"{t}/attn/kv", linear_to_dense(
            np.concatenate([kw, vw]), None if kb is None else np.concatenate([kb, vb])))
      wr.linear(f"{t}/attn/proj", a + "o_proj", bias=None)
      if s.has(a + "sequence_reduction.sequence_reduction.weight"):
        srw = wr.conv(f"{t}/attn/sr", a + "sequence_reduction.sequence_reduction", bias=None)
        sr = int(srw.shape[2])
        wr.layernorm(f"{t}/attn/norm", a + "sequence_reduction.layer_norm")
      w1 = wr.linear(f"{t}/mlp/fc1", p + "mlp.fc1", bias=None)
      wr.conv(f"{t}/mlp/dwconv", p + "mlp.dwconv.dwconv", bias=None)
      wr.linear(f"{t}/mlp/fc2", p + "mlp.fc2", bias=None)
      if j == 0 and w1 is not None:
        mlp_ratios.append(w1.shape[0] / w1.shape[1])
    srs.append(sr)
    wr.layernorm(f"{E}_norm", S + "layer_norm")
  D = "decode_head."
  decoder_dim = None
  for i in range(num_stages):
    w = wr.linear(f"decode_linear_{i}", D + f"linear_projections.{i}.proj", bias=None)
    decoder_dim = int(w.shape[0]) if w is not None else decoder_dim
  wr.conv("decode_fuse/conv", D + "linear_fuse", bias=None)
  wr.batchnorm("decode_fuse/bn", D + "batch_norm")
  cw = wr.conv("head", D + "classifier", bias=None)
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
  batch_stats = cast_params(unflatten_params(wr.batch_stats), param_dtype)
  from vitjax.models.segformer import SegFormer  # pylint: disable=g-import-not-at-top
  return converted({"params": params, "batch_stats": batch_stats}, SegFormer, kwargs)


@register_exporter(family="segformer", models=("SegFormer",))
def segformer_hf_snapshot(model, variables, image_size=512):
  """A vitjax SegFormer -> (HF SegformerForSemanticSegmentation state dict, config).

  Refused: LayerNorm / BatchNorm epsilons other than PyTorch's 1e-5 (HF's
  SegFormer fixes them).
  """
  del image_size
  what = "Hugging Face SegFormer"
  if model.layer_norm_eps != 1e-5 or model.bn_eps != 1e-5:
    raise UserError(f"{what} uses LayerNorm and BatchNorm epsilon 1e-5; this model has "
                    f"layer_norm_eps={model.layer_norm_eps}, bn_eps={model.bn_eps}.")
  t = TorchWriter(variables)
  n = len(model.depths)
  for i in range(n):
    e, src = "segformer.encoder.", f"encoder/stage_{i}"
    t.conv(f"{e}patch_embeddings.{i}.proj", f"{src}_patch_embed")
    t.layernorm(f"{e}patch_embeddings.{i}.layer_norm", f"{src}_patch_embed_norm")
    for j in range(model.depths[i]):
      b, blk = f"{e}block.{i}.{j}.", f"{src}_block_{j}"
      a = b + "attention.self."
      t.layernorm(b + "layer_norm_1", f"{blk}/norm1")
      t.layernorm(b + "layer_norm_2", f"{blk}/norm2")
      t.linear(a + "query", f"{blk}/attn/q")
      kv = t.layer(f"{blk}/attn/kv")
      weights = np.split(np.asarray(kv["kernel"]).T, 2)
      biases = np.split(np.asarray(kv["bias"]), 2) if "bias" in kv else (None, None)
      for name, w, bias in zip(("key", "value"), weights, biases):
        t.tensor(a + name + ".weight", w)
        if bias is not None:
          t.tensor(a + name + ".bias", bias)
      t.linear(b + "attention.output.dense", f"{blk}/attn/proj")
      if model.sr_ratios[i] > 1:
        t.conv(a + "sr", f"{blk}/attn/sr")
        t.layernorm(a + "layer_norm", f"{blk}/attn/norm")
      t.linear(b + "mlp.dense1", f"{blk}/mlp/fc1")
      t.conv(b + "mlp.dwconv.dwconv", f"{blk}/mlp/dwconv")
      t.linear(b + "mlp.dense2", f"{blk}/mlp/fc2")
    t.layernorm(f"{e}layer_norm.{i}", f"{src}_norm")
  for i in range(n):
    t.linear(f"decode_head.linear_c.{i}.proj", f"decode_linear_{i}")
  t.conv("decode_head.linear_fuse", "decode_fuse/conv")
  t.batchnorm("decode_head.batch_norm", "decode_fuse/bn")
  t.conv("decode_head.classifier", "head")
  config = dict(
      model_type="segformer", architectures=["SegformerForSemanticSegmentation"],
      num_channels=int(variables["params"]["encoder"]["stage_0_patch_embed"]["kernel"].shape[2]),
      num_encoder_blocks=n, depths=[int(d) for d in model.depths],
      sr_ratios=[int(r) for r in model.sr_ratios],
      hidden_sizes=[int(d) for d in model.embed_dims],
      patch_sizes=[int(p) for p in model.patch_sizes], strides=[int(s) for s in model.strides],
      num_attention_heads=[int(h) for h in model.num_heads],
      mlp_ratios=[int(r) if float(r).is_integer() else float(r) for r in model.mlp_ratios],
      hidden_act="gelu", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
      classifier_dropout_prob=float(model.dropout), drop_path_rate=0.0,
      decoder_hidden_size=int(model.decoder_dim), qkv_bias=bool(model.qkv_bias),
      **hf_labels(model.num_classes))
  return t.finish(what), config


__all__ = ["hf_segformer_to_vitjax", "segformer_hf_snapshot"]
