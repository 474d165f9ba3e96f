"""Structured pruning of attention heads (Michel et al. 2019, "Are Sixteen
Heads Really Better than One?").

Importance of head h in a layer: I_h = sum over batches of |dL / d xi_h|,
where xi_h is a mask multiplying the head's output before the output
projection (the paper's Eq. 2, accumulated over a few training batches).
Scaling head h's output by xi_h is the same as scaling the rows of the
projection kernel that read it, W_h, so dL/dxi_h = <W_h, dL/dW_h> at xi = 1:
the importance comes from one ordinary gradient, no change to the model.
Scores are normalised per layer (L2, as in the paper) and the least important
`ratio` of all heads are removed across layers, at least one head kept per
layer. Removing a head deletes its q, k, v columns of `qkv` and its rows of
`proj`, so the pruned model really has fewer parameters and FLOPs.

Works on any model whose attention is vitjax.models.layers.Attention (params
`qkv` [D, 3 H d] in q/k/v-major, head-major order and `proj` [H d, D]); the
pruned model can be built for ViT / DeiT (`VisionTransformer(head_counts=...)`),
the only families whose blocks take per-layer head counts.
"""

import flax
import jax
import jax.numpy as jnp
import numpy as np


def attention_paths(params):
  """Paths (tuples) of every Attention module in `params` (a `qkv` and a
  `proj` Dense side by side), in the order the flattened tree lists them."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
  paths = []
  for key in flat:
    if key[-2:] == ("qkv", "kernel") and key[:-2] + ("proj", "kernel") in flat:
      paths.append(key[:-2])
  natural = lambda p: [(0, int(s), "") if s.isdigit() else (1, 0, s)
                       for part in p for s in part.split("_")]
  return sorted(set(paths), key=natural)


def _get(tree, path):
  for k in path:
    tree = tree[k]
  return tree


def head_scores_from_grad(params, grads, paths, head_dim: int):
  """{path: [H] dL/dxi_h} from the proj kernels and their gradients."""
  out = {}
  for p in paths:
    w = _get(params, p)["proj"]["kernel"]
    g = _get(grads, p)["proj"]["kernel"]
    heads = w.shape[0] // head_dim
    out[p] = jnp.sum((w * g).reshape(heads, head_dim * w.shape[1]), axis=1)
  return out


def head_importance(loss_fn, params, batches, head_dim: int):
  """Michel et al. importance {path: [H] numpy}, L2-normalised per layer.

  loss_fn(params, batch) -> scalar loss; batches: an iterable of batches
  (a few training batches suffice).
  """
  paths = attention_paths(params)
  if not paths:
    raise ValueError("no attention layers (qkv + proj) found in the params.")

  @jax.jit
  def scores(params, batch):
    grads = jax.grad(loss_fn)(params, batch)
    return {"/".join(p): s for p, s in head_scores_from_grad(params, grads, paths,
                                                             head_dim).items()}

  total = None
  for batch in batches:
    s = jax.tree.map(jnp.abs, scores(params, batch))
    total = s if total is None else jax.tree.map(jnp.add, total, s)
  out = {}
  for p in paths:
    v = np.asarray(total["/".join(p)], np.float64)
    out[p] = v / max(np.linalg.norm(v), 1e-20)
  return out


def select_heads(importance, ratio: float):
  """{path: sorted kept head indices}: the `round(ratio * all heads)` least
  important heads across layers go, but every layer keeps at least one."""
  if not 0.0 <= ratio < 1.0:
    raise ValueError(f"ratio={ratio}: the fraction of heads to prune must be in [0, 1).")
  entries = sorted((float(v), p, h) for p, vals in importance.items()
                   for h, v in enumerate(vals))
  n_prune = int(round(ratio * len(entries)))
  keep = {p: set(range(len(v))) for p, v in importance.items()}
  for _, p, h in entries:
    if n_prune == 0:
      break
    if len(keep[p]) > 1:
      keep[p].discard(h)
      n_prune -= 1
  return {p: sorted(k) for p, k in keep.items()}


def prune_heads(params, keep, head_dim: int):
  """Params with only the `keep` heads of each attention layer (numpy)."""
  params = jax.tree.map(np.asarray, flax.core.unfreeze(params))
  for p, heads in keep.items():
    att = _get(params, p)
    qkv, proj = att["qkv"], att["proj"]
    h = proj["kernel"].shape[0] // head_dim
    idx = np.asarray(heads)
    d_in = qkv["kernel"].shape[0]
    qkv["kernel"] = qkv["kernel"].reshape(d_in, 3, h, head_dim)[:, :, idx].reshape(d_in, -1)
    if "bias" in qkv:
      qkv["bias"] = qkv["bias"].reshape(3, h, head_dim)[:, idx].reshape(-1)
    proj["kernel"] = proj["kernel"].reshape(h, head_dim, -1)[idx].reshape(len(idx) * head_dim, -1)
  return params


def count_params(params) -> int:
  return int(sum(np.size(x) for x in jax.tree.leaves(params)))
