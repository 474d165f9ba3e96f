"""Post-training int8 weight quantization: per output channel, symmetric.

Every matmul / conv weight (a leaf named `kernel`, any model of the zoo) is
stored as int8 values q and one float32 scale per output channel (the last
axis): w ~= q * scale with scale = max |w| over the channel / 127 and
q = round(w / scale) in [-127, 127]. Biases, norms, embeddings, position
tables stay float32 (they are a small fraction of the bytes). Inference
dequantizes once (`dequantize_params`) and runs the usual model, so the
accuracy measured is exactly that of the int8 weights; the stored size is 4x
smaller for the quantized leaves. `per_channel=False` uses one scale per
tensor instead (coarser; for comparison).

Quantization-aware training: `fake_quantize` rounds the same kernels in the
forward pass and lets the gradient through unchanged (straight-through
estimator, Bengio et al. 2013), so a fine-tune can adapt the float weights
to their quantized values.
"""

import flax
import jax
import jax.numpy as jnp
import numpy as np


def _quantize(w: np.ndarray, bits: int, per_channel: bool = True):
  qmax = 2 ** (bits - 1) - 1
  axes = tuple(range(w.ndim - 1)) if per_channel else tuple(range(w.ndim))
  scale = np.max(np.abs(w), axis=axes, keepdims=True) / qmax
  scale = np.where(scale == 0, 1.0, scale).astype(np.float32)
  q = np.clip(np.round(w / scale), -qmax, qmax).astype(np.int8)
  scale = np.broadcast_to(scale, (1,) * (w.ndim - 1) + (w.shape[-1],))
  return {"int8": q, "scale": np.ascontiguousarray(scale).reshape(-1)}


def _check_bits(bits):
  if not 2 <= bits <= 8:
    raise ValueError(f"bits={bits}: int8 storage holds 2..8 bits.")


def _is_weight(key, w, min_size=0):
  return key[-1] == "kernel" and np.ndim(w) >= 2 and np.size(w) >= min_size


def quantize_params(params, bits: int = 8, min_size: int = 0, per_channel: bool = True):
  """Params with every `kernel` (of >= min_size elements) replaced by
  {'int8': values, 'scale': per-output-channel scales}."""
  _check_bits(bits)
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
  out = {}
  for key, leaf in flat.items():
    w = np.asarray(leaf, np.float32)
    if _is_weight(key, w, min_size):
      out[key] = _quantize(w, bits, per_channel)
    else:
      out[key] = leaf
  return flax.traverse_util.unflatten_dict(out)


def fake_quantize(params, bits: int = 8, per_channel: bool = True):
  """The params with every kernel rounded as `quantize_params` stores it
  (q * scale), differentiably: the forward sees the quantized values, the
  gradient passes straight through to the float weights (jit-friendly)."""
  _check_bits(bits)
  qmax = 2 ** (bits - 1) - 1

  def fq(path, w):
    key = tuple(getattr(p, "key", p) for p in path)
    if not _is_weight(key, w):
      return w
    axes = tuple(range(w.ndim - 1)) if per_channel else tuple(range(w.ndim))
    scale = jax.lax.stop_gradient(jnp.max(jnp.abs(w), axis=axes, keepdims=True)) / qmax
    scale = jnp.where(scale == 0, 1.0, scale)
    q = jnp.clip(jnp.round(w / scale), -qmax, qmax) * scale
    return w + jax.lax.stop_gradient(q - w)

  return jax.tree_util.tree_map_with_path(fq, params)


def _is_quantized(x):
  return isinstance(x, dict) and set(x) == {"int8", "scale"}


def dequantize_params(qparams, dtype=jnp.float32):
  """The float params the int8 weights stand for (q * scale)."""
  def walk(t):
    if _is_quantized(t):
      return jnp.asarray(t["int8"].astype(np.float32) * t["scale"], dtype)
    if isinstance(t, dict):
      return {k: walk(v) for k, v in t.items()}
    return t
  return walk(flax.core.unfreeze(qparams))


def quantized_size_bytes(qparams) -> tuple[int, int]:
  """(bytes as stored with int8 kernels, bytes of the same params in float32)."""
  stored = full = 0
  def walk(t):
    nonlocal stored, full
    if _is_quantized(t):
      stored += t["int8"].size + 4 * t["scale"].size
      full += 4 * t["int8"].size
    elif isinstance(t, dict):
      for v in t.values():
        walk(v)
    else:
      n = int(np.prod(np.shape(t)))
      stored += 4 * n
      full += 4 * n
  walk(flax.core.unfreeze(qparams))
  return stored, full
