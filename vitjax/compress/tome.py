"""Token merging, ToMe (Bolya et al. 2023, "Token Merging: Your ViT But Faster").

Inference on a trained ViT without retraining: in every block, between the
attention and the MLP, `r` pairs of similar tokens are merged into one, so
each later block sees r fewer tokens.

Bipartite soft matching (paper Sec. 3): the mergeable tokens are split
alternately into sets A (even positions) and B (odd positions); each token of
A is joined to its most similar token of B (cosine similarity of the
attention keys, averaged over heads); the r most similar of those edges are
merged, each A token folded into its B partner. Merged tokens are the
size-weighted average of their members and carry their size s (number of
patches they stand for); the next attention adds log s to its logits
(proportional attention), so a merged token weighs as much as its members did.
Prefix tokens (class / distillation token) are never merged.

Used by vitjax.models.vit.VisionTransformer (`tome_r`); applies to any
backbone with a plain global-attention token sequence (ViT, DeiT), not to the
windowed / hierarchical ones (Swin, NAT, PVT's spatial reduction, CNNs).
"""

import jax
import jax.numpy as jnp


def bipartite_soft_matching(metric, r: int):
  """Plans the merge of `r` tokens of `metric` [B, N, C] (no prefix tokens).

  Returns `merge(x) -> [B, N - r, ...]` summing each merged A token into its
  B partner; the kept A tokens come first (in their original order), then
  the B tokens. r is clipped to N // 2 (every A token merged).
  """
  n = metric.shape[1]
  r = min(r, n // 2)
  if r <= 0:
    return lambda x: x
  metric = metric / jnp.linalg.norm(metric, axis=-1, keepdims=True)
  a, b = metric[:, ::2], metric[:, 1::2]
  scores = jnp.einsum("bic,bjc->bij", a, b)              # [B, Na, Nb]
  node_max = jnp.max(scores, axis=-1)                    # best partner per A token
  node_idx = jnp.argmax(scores, axis=-1)
  order = jnp.argsort(-node_max, axis=-1)                 # most similar edges first
  src_idx = order[:, :r]                                 # A tokens merged away
  unm_idx = jnp.sort(order[:, r:], axis=-1)              # A tokens kept, in order
  dst_idx = jnp.take_along_axis(node_idx, src_idx, axis=-1)

  def merge(x):
    xa, xb = x[:, ::2], x[:, 1::2]
    take = lambda t, idx: jnp.take_along_axis(t, idx.reshape(idx.shape + (1,) * (t.ndim - 2)),
                                              axis=1)
    src, unm = take(xa, src_idx), take(xa, unm_idx)
    dst = jax.vmap(lambda d, i, s: d.at[i].add(s))(xb, dst_idx, src)
    return jnp.concatenate([unm, dst], axis=1)

  return merge


def merge_tokens(x, size, metric, r: int, num_prefix: int):
  """One ToMe step on x [B, N, D] with sizes [B, N] (prefix tokens first and
  kept): returns (x, size) with r fewer tokens, merged tokens the
  size-weighted means of their members, sizes summed."""
  if r <= 0:
    return x, size
  p = num_prefix
  merge = bipartite_soft_matching(metric[:, p:], r)
  s = size[:, p:, None].astype(x.dtype)
  merged = merge(x[:, p:] * s)
  new_size = merge(s)
  x = jnp.concatenate([x[:, :p], merged / new_size], axis=1)
  size = jnp.concatenate([size[:, :p], new_size[..., 0].astype(size.dtype)], axis=1)
  return x, size
