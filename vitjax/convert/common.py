"""Helpers shared by the weight converters of every model family.

- `load_state_dict`: a `.safetensors` file (or a Hugging Face snapshot folder,
  sharded or not) or an in-memory dict -> {name: np.ndarray}. Pickle-based
  files (`.bin`, `.pt`, `.pth`, ...) are refused: unpickling runs code.
- Layout helpers between PyTorch and Flax: `linear_to_dense` (torch Linear
  [out, in] -> flax Dense kernel [in, out]), `conv_to_flax` (OIHW -> HWIO),
  `layernorm_to_flax`, `batchnorm_to_flax`, and their inverses.
- `ParamWriter`: the one writer every importer fills: flat '/'-joined names
  -> nested `{'params', 'batch_stats'}` variables, with one method per torch
  layer kind (linear, conv, layernorm, batchnorm). `put_torch` is the exporters'
  counterpart (name.weight / name.bias into a torch state dict).
- `StateDict`: a checked view of a state dict. Converters `take()` every
  tensor they use; missing names are collected and reported together, and
  `finish()` refuses tensors nobody used (they would be silently dropped:
  e.g. a layer scale or a register token the target model does not have).
- `flatten_params` / `unflatten_params`: nested param dicts <-> 'a/b/c' keys.
"""

import json
import os
import re
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from vitjax.errors import UserError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".tar")

# safetensors dtype names -> numpy dtypes (bfloat16 / float8 via ml_dtypes).
_ST_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
    "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8",
    "BOOL": "bool", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
}


def _np_dtype(name: str):
  if name in ("bfloat16", "float8_e4m3fn", "float8_e5m2"):
    import ml_dtypes  # pylint: disable=g-import-not-at-top
    return np.dtype(getattr(ml_dtypes, name))
  return np.dtype(name)


def to_numpy(x) -> np.ndarray:
  """np.asarray for numpy / jax arrays and torch tensors (any device/dtype)."""
  if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor
    x = x.detach().cpu()
    try:
      return x.numpy()
    except TypeError:  # bfloat16 and other dtypes numpy lacks
      return x.float().numpy()
  return np.asarray(x)


def read_safetensors(path: str) -> Dict[str, np.ndarray]:
  """Reads a .safetensors file into numpy arrays, without torch.

  Uses the `safetensors` package when it is installed; tensors of dtypes its
  numpy API does not know (bfloat16, float8) and a missing package fall back
  to parsing the (simple, documented) file format directly.
  """
  try:
    from safetensors import safe_open  # pylint: disable=g-import-not-at-top
  except ImportError:
    safe_open = None
  out, rest = {}, None
  if safe_open is not None:
    try:
      handle = safe_open(path, framework="np")
    except Exception as e:  # SafetensorError and OSError  pylint: disable=broad-except
      raise UserError(f"Cannot read safetensors file {path}: {e}") from e
    with handle as f:
      rest = []
      for k in f.keys():
        try:
          out[k] = f.get_tensor(k)
        except TypeError:  # a dtype numpy lacks, e.g. bfloat16
          rest.append(k)
  if rest is None or rest:
    out.update(_read_safetensors_raw(path, rest))
  return out


def _read_safetensors_raw(path: str, names: Optional[Iterable[str]] = None):
  """Parses a safetensors file: u64 header size, JSON header, raw data."""
  try:
    with open(path, "rb") as f:
      n = int.from_bytes(f.read(8), "little")
      if not 2 <= n <= 100_000_000:
        raise ValueError(f"bad header size {n}")
      header = json.loads(f.read(n))
      data = np.memmap(f, dtype=np.uint8, mode="r", offset=8 + n)
  except (OSError, ValueError) as e:
    raise UserError(f"Cannot read safetensors file {path}: {e}") from e
  header.pop("__metadata__", None)
  names = list(header) if names is None else list(names)
  out = {}
  for k in names:
    info = header[k]
    if info["dtype"] not in _ST_DTYPES:
      raise UserError(f"{path}: tensor {k!r} has unsupported dtype {info['dtype']}.")
    start, end = info["data_offsets"]
    dtype = _np_dtype(_ST_DTYPES[info["dtype"]])
    out[k] = np.array(data[start:end].view(dtype).reshape(info["shape"]))
  return out


def load_state_dict(src: Union[str, os.PathLike, Mapping[str, Any]]
                    ) -> Dict[str, np.ndarray]:
  """A state dict as {name: np.ndarray}, from a file, a folder or a dict.

  src: a `.safetensors` file; a folder holding `model.safetensors` or a
    sharded `model.safetensors.index.json` (a Hugging Face snapshot); a `.npz`
    file (read without pickle); or an already loaded mapping of numpy arrays,
    jax arrays or torch tensors.
  Pickle-based checkpoints (.bin/.pt/.pth/...) are refused with a UserError:
  loading them can run arbitrary code. Convert them to safetensors first.
  """
  if isinstance(src, Mapping):
    return {str(k): to_numpy(v) for k, v in src.items()}
  if not isinstance(src, (str, os.PathLike)):
    raise UserError(f"Expected a checkpoint path or a state dict, got {type(src).__name__}.")
  path = os.fspath(src)
  if os.path.isdir(path):
    single = os.path.join(path, "model.safetensors")
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(single):
      return read_safetensors(single)
    if os.path.isfile(index):
      with open(index) as f:
        shards = sorted(set(json.load(f)["weight_map"].values()))
      out = {}
      for shard in shards:
        out.update(read_safetensors(os.path.join(path, shard)))
      return out
    found = sorted(os.listdir(path))[:10]
    if any(f.endswith(PICKLE_SUFFIXES) for f in found):
      raise UserError(_pickle_message(path))
    raise UserError(f"No model.safetensors (or model.safetensors.index.json) in "
                    f"folder {path}; it holds: {', '.join(found) or 'nothing'}.")
  lower = path.lower()
  if lower.endswith(PICKLE_SUFFIXES):
    raise UserError(_pickle_message(path))
  if not os.path.exists(path):
    raise UserError(f"Checkpoint {path} does not exist.")
  if lower.endswith(".safetensors"):
    return read_safetensors(path)
  if lower.endswith(".npz"):
    try:
      with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
    except ValueError as e:
      raise UserError(f"Cannot read {path} without unpickling: {e}") from e
  raise UserError(f"Unknown checkpoint format {path!r}: expected a .safetensors "
                  "file (or a folder with model.safetensors).")


def _pickle_message(path: str) -> str:
  return (
      f"{path} is a pickle-based PyTorch checkpoint; vitjax does not unpickle "
      "files (that can run arbitrary code). Convert it to safetensors once, in "
      "an environment you trust:\n"
      "  import torch, safetensors.torch\n"
      f"  sd = torch.load({path!r}, map_location='cpu', weights_only=True)\n"
      "  sd = sd.get('model', sd)  # some checkpoints nest the weights\n"
      "  safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, "
      "'model.safetensors')\n"
      "and pass the .safetensors file instead (Hugging Face repos usually ship "
      "a model.safetensors already).")


# ----------------------------------------------------------------------------
# PyTorch <-> Flax layouts.

def linear_to_dense(weight, bias=None) -> Dict[str, np.ndarray]:
  """torch.nn.Linear weight [out, in] (+ bias) -> flax Dense {kernel [in, out], bias}."""
  out = {"kernel": np.ascontiguousarray(np.asarray(weight).T)}
  if bias is not None:
    out["bias"] = np.asarray(bias)
  return out


def dense_to_linear(p: Mapping[str, Any]) -> Tuple[np.ndarray, Optional[np.ndarray]]:
  """flax Dense params -> (torch Linear weight [out, in], bias or None)."""
  w = np.ascontiguousarray(np.asarray(p["kernel"]).T)
  return w, (np.asarray(p["bias"]) if "bias" in p else None)


def conv_to_flax(weight, bias=None) -> Dict[str, np.ndarray]:
  """torch Conv weight [O, I, *spatial] -> flax Conv kernel [*spatial, I, O]."""
  w = np.asarray(weight)
  perm = tuple(range(2, w.ndim)) + (1, 0)
  out = {"kernel": np.ascontiguousarray(w.transpose(perm))}
  if bias is not None:
    out["bias"] = np.asarray(bias)
  return out


def conv_to_torch(p: Mapping[str, Any]) -> Tuple[np.ndarray, Optional[np.ndarray]]:
  """flax Conv params [*spatial, I, O] -> (torch weight [O, I, *spatial], bias)."""
  k = np.asarray(p["kernel"])
  perm = (k.ndim - 1, k.ndim - 2) + tuple(range(k.ndim - 2))
  return np.ascontiguousarray(k.transpose(perm)), (
      np.asarray(p["bias"]) if "bias" in p else None)


def layernorm_to_flax(weight, bias=None) -> Dict[str, np.ndarray]:
  """torch LayerNorm (weight, bias) -> flax LayerNorm {scale, bias}."""
  out = {"scale": np.asarray(weight)}
  if bias is not None:
    out["bias"] = np.asarray(bias)
  return out


def layernorm_to_torch(p: Mapping[str, Any]):
  """flax LayerNorm {scale, bias} -> (torch weight, bias or None)."""
  return np.asarray(p["scale"]), (np.asarray(p["bias"]) if "bias" in p else None)


def batchnorm_to_flax(weight, bias, running_mean, running_var
                      ) -> Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray]]:
  """torch BatchNorm -> (flax params {scale, bias}, batch_stats {mean, var})."""
  return ({"scale": np.asarray(weight), "bias": np.asarray(bias)},
          {"mean": np.asarray(running_mean), "var": np.asarray(running_var)})


def put_torch(out: Dict[str, Any], name: str, weight, bias=None):
  """Sets `name.weight` (and `name.bias` unless None) of a torch state dict being built."""
  out[name + ".weight"] = weight
  if bias is not None:
    out[name + ".bias"] = bias


# ----------------------------------------------------------------------------
# Param trees.

def flatten_params(tree: Mapping[str, Any], sep: str = "/") -> Dict[str, Any]:
  """{'a': {'b': x}} -> {'a/b': x} (works on flax FrozenDicts too)."""
  out = {}
  def rec(t, prefix):
    for k, v in t.items():
      if hasattr(v, "items"):
        rec(v, prefix + k + sep)
      else:
        out[prefix + k] = v
  rec(tree, "")
  return out


def unflatten_params(flat: Mapping[str, Any], sep: str = "/") -> Dict[str, Any]:
  """{'a/b': x} -> {'a': {'b': x}}."""
  out: Dict[str, Any] = {}
  for k, v in flat.items():
    node = out
    *parents, leaf = k.split(sep)
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = v
  return out


def cast_params(tree, dtype):
  """Casts the floating-point leaves of a nested dict to `dtype` (None: keep)."""
  if dtype is None:
    return tree
  def cast(x):
    x = np.asarray(x)
    # kind 'V': ml_dtypes' bfloat16 / float8.
    return x.astype(dtype) if x.dtype.kind in "fV" else x
  return {k: (cast_params(v, dtype) if isinstance(v, dict) else cast(v)) for k, v in tree.items()}


# ----------------------------------------------------------------------------
# Checked access to a state dict.

class StateDict:
  """A state dict that records which tensors a converter used.

  `take(name)` returns the tensor (None if `optional` and absent) and marks it
  used; absent required names are collected. `finish()` raises one UserError
  naming every missing tensor, or every tensor left unused that is not
  matched by `ignore` (regexes).
  """

  def __init__(self, sd: Mapping[str, np.ndarray], what: str, prefix: str = ""):
    self.sd = dict(sd)
    self.what = what
    self.prefix = prefix
    self.used = set()
    self.missing = []

  def has(self, name: str) -> bool:
    return self.prefix + name in self.sd

  def take(self, name: str, optional: bool = False, shape: Optional[Sequence[int]] = None):
    key = self.prefix + name
    if key not in self.sd:
      if not optional:
        self.missing.append(key)
      return None
    self.used.add(key)
    x = self.sd[key]
    if shape is not None and tuple(x.shape) != tuple(shape):
      raise UserError(f"{self.what}: {key} has shape {tuple(x.shape)}, expected "
                      f"{tuple(shape)}.")
    return x

  def check_missing(self):
    if self.missing:
      raise UserError(
          f"Not a {self.what} state dict: missing {len(self.missing)} tensor(s): "
          f"{_short_list(self.missing)}. It has: {_short_list(sorted(self.sd))}.")

  def finish(self, ignore: Sequence[str] = ()):
    self.check_missing()
    pats = [re.compile(p) for p in ignore]
    unused = sorted(k for k in self.sd if k not in self.used
                    and not any(p.search(k) for p in pats))
    if unused:
      raise UserError(
          f"{self.what}: the checkpoint has {len(unused)} tensor(s) this model has "
          f"no place for: {_short_list(unused)}. It is a variant the converter "
          "does not support (or of another architecture); dropping them would "
          "change what the model computes.")


def _short_list(names: Sequence[str], n: int = 8) -> str:
  names = list(names)
  s = ", ".join(names[:n])
  return s + (f", ... ({len(names) - n} more)" if len(names) > n else "")


def rename_tensors(sd: Mapping[str, Any], rules: Sequence[Tuple[str, str]]) -> Dict[str, Any]:
  """Tensor names rewritten by (regex, replacement) rules, applied in order to
  every name (e.g. the names older transformers releases, and the Hub's
  snapshots, use -> the names a converter reads). Names no rule matches are kept."""
  compiled = [(re.compile(p), r) for p, r in rules]
  out = {}
  for k, v in sd.items():
    for pat, rep in compiled:
      k = pat.sub(rep, k)
    out[k] = v
  return out


def find_prefix(keys: Iterable[str], suffix: str) -> Optional[str]:
  """The prefix p such that p + suffix is a key (shortest if several), or None."""
  found = [k[:-len(suffix)] for k in keys if k.endswith(suffix)]
  return min(found, key=len) if found else None


def count_indexed(keys: Iterable[str], pattern: str) -> int:
  """1 + the largest integer captured by `pattern` in any key, 0 if none."""
  rx = re.compile(pattern)
  idx = [int(m.group(1)) for k in keys if (m := rx.match(k))]
  return max(idx) + 1 if idx else 0


def read_json_config(config) -> Optional[Dict[str, Any]]:
  """A config as a dict: None, a dict, a path to a JSON file or folder, or an
  object with `to_dict()` (e.g. a transformers PretrainedConfig)."""
  if config is None or isinstance(config, dict):
    return config
  if hasattr(config, "to_dict"):
    return config.to_dict()
  if isinstance(config, (str, os.PathLike)):
    path = os.fspath(config)
    if os.path.isdir(path):
      path = os.path.join(path, "config.json")
    try:
      with open(path) as f:
        return json.load(f)
    except (OSError, ValueError) as e:
      raise UserError(f"Cannot read the model config {path}: {e}") from e
  raise UserError(f"Unsupported config type {type(config).__name__}: pass a dict "
                  "or the path of a config.json.")


# ----------------------------------------------------------------------------
# The importers' writer.

class ParamWriter:
  """Flax variables built from a torch state dict, one '/'-joined name at a time.

  `put(name, tree)` writes a layer's leaves under `name/`; `set(name, x)` one
  tensor; `linear` / `conv` / `layernorm` / `batchnorm` / `conv_bn` take the
  torch layer `src` from the StateDict `s` (names relative to its prefix) and
  write it in flax layout. `params` and `batch_stats` are the flat dicts (read
  or edit them freely); `variables()` nests them.

  dtype: cast every written tensor (e.g. np.float32); None keeps the
  checkpoint's dtypes (the caller casts at the end, see `cast_params`).
  bias: True (required), False (none) or None (taken when present).
  """

  def __init__(self, s: Optional[StateDict] = None, dtype=None):
    self.s = s
    self.dtype = dtype
    self.params: Dict[str, Any] = {}
    self.batch_stats: Dict[str, Any] = {}

  def _cast(self, x):
    return x if self.dtype is None else np.asarray(x, self.dtype)

  def set(self, name: str, x):
    """One tensor at `name` (a token, a position embedding, ...)."""
    self.params[name] = self._cast(x)

  def put(self, name: str, tree: Mapping[str, Any]):
    """A layer's params (e.g. {'kernel', 'bias'}) under `name/`."""
    for k, v in tree.items():
      self.params[f"{name}/{k}"] = self._cast(v)

  def put_stats(self, name: str, tree: Mapping[str, Any]):
    """A layer's batch_stats (e.g. {'mean', 'var'}) under `name/`."""
    for k, v in tree.items():
      self.batch_stats[f"{name}/{k}"] = self._cast(v)

  def _bias(self, src: str, bias: Optional[bool]):
    if bias is False:
      return None
    return self.s.take(src + ".bias", optional=bias is None)

  def linear(self, dst: str, src: str, bias: Optional[bool] = True):
    """torch Linear `src` -> flax Dense `dst`; returns the torch weight."""
    w = self.s.take(src + ".weight")
    self.put(dst, linear_to_dense(w, self._bias(src, bias)))
    return w

  def conv(self, dst: str, src: str, bias: Optional[bool] = True):
    """torch Conv `src` -> flax Conv `dst`; returns the torch weight."""
    w = self.s.take(src + ".weight")
    self.put(dst, conv_to_flax(w, self._bias(src, bias)))
    return w

  def layernorm(self, dst: str, src: str):
    """torch LayerNorm / GroupNorm `src` (weight, bias) -> flax {scale, bias} at `dst`."""
    self.put(dst, layernorm_to_flax(self.s.take(src + ".weight"), self.s.take(src + ".bias")))

  def batchnorm(self, dst: str, src: str):
    """torch BatchNorm `src` -> params {scale, bias} and batch_stats {mean, var} at
    `dst`; num_batches_tracked is dropped (flax does not count)."""
    params, stats = batchnorm_to_flax(
        self.s.take(src + ".weight"), self.s.take(src + ".bias"),
        self.s.take(src + ".running_mean"), self.s.take(src + ".running_var"))
    self.put(dst, params)
    self.put_stats(dst, stats)
    self.s.take(src + ".num_batches_tracked", optional=True)

  def conv_bn(self, dst: str, conv: str, bn: str):
    """A bias-free torch conv `conv` + BatchNorm `bn` -> `dst/conv`, `dst/bn`."""
    w = self.s.take(conv + ".weight")
    if w is not None:
      self.put(dst + "/conv", conv_to_flax(w))
    self.batchnorm(dst + "/bn", bn)

  def drop(self, prefix: str):
    """Removes every param under `prefix` (a classifier left for the caller to initialise)."""
    for k in [k for k in self.params if k.startswith(prefix)]:
      del self.params[k]

  def variables(self, batch_stats: bool = False) -> Dict[str, Any]:
    """{'params': nested} (+ 'batch_stats' when asked or when any was written)."""
    out = {"params": unflatten_params(self.params)}
    if batch_stats or self.batch_stats:
      out["batch_stats"] = unflatten_params(self.batch_stats)
    return out


# ----------------------------------------------------------------------------
# The exporters' writer.

class TorchWriter:
  """A torch state dict built from flax variables, one layer at a time.

  The exporters' counterpart of `ParamWriter`: `linear` / `conv` /
  `layernorm` / `batchnorm` read the flax layer `src` ('/'-joined, from
  `variables['params']` and, for BatchNorm, `variables['batch_stats']`) and
  write torch layer `dst` (weight, bias, running statistics) into `out`;
  `tensor` copies one array. `finish(what)` refuses params nobody read (they
  would be silently dropped from the export).
  """

  def __init__(self, variables: Mapping[str, Any]):
    self.params = {k: np.asarray(v) for k, v in flatten_params(variables["params"]).items()}
    self.stats = {k: np.asarray(v)
                  for k, v in flatten_params(variables.get("batch_stats") or {}).items()}
    self.used = set()
    self.out: Dict[str, np.ndarray] = {}

  def has(self, src: str) -> bool:
    return src in self.params or any(k.startswith(src + "/") for k in self.params)

  def get(self, src: str) -> np.ndarray:
    """The param at `src` (marked as used)."""
    if src not in self.params:
      raise UserError(f"The model's params have no {src}; they do not belong to the "
                      "module being exported.")
    self.used.add(src)
    return self.params[src]

  def layer(self, src: str) -> Dict[str, np.ndarray]:
    """The params under `src/` (marked as used), e.g. {'kernel', 'bias'}."""
    keys = [k for k in self.params if k.startswith(src + "/")]
    if not keys:
      raise UserError(f"The model's params have no {src}/...; they do not belong to the "
                      "module being exported.")
    self.used.update(keys)
    return {k[len(src) + 1:]: self.params[k] for k in keys}

  def tensor(self, dst: str, x):
    self.out[dst] = np.asarray(x, order="C")

  def linear(self, dst: str, src: str):
    """flax Dense `src` -> torch Linear `dst`; returns the torch weight."""
    w, b = dense_to_linear(self.layer(src))
    put_torch(self.out, dst, w, b)
    return w

  def conv(self, dst: str, src: str):
    """flax Conv `src` -> torch Conv `dst`; returns the torch weight."""
    w, b = conv_to_torch(self.layer(src))
    put_torch(self.out, dst, w, b)
    return w

  def layernorm(self, dst: str, src: str):
    """flax LayerNorm {scale, bias} `src` -> torch LayerNorm (weight, bias) `dst`."""
    put_torch(self.out, dst, *layernorm_to_torch(self.layer(src)))

  def batchnorm(self, dst: str, src: str):
    """flax BatchNorm params + batch_stats `src` -> torch BatchNorm `dst` (running
    statistics included; num_batches_tracked 0)."""
    if f"{src}/mean" not in self.stats:
      raise UserError(f"The model's variables have no batch_stats for {src}; export the "
                      "variables with their 'batch_stats' collection.")
    p = self.layer(src)
    put_torch(self.out, dst, p["scale"], p["bias"])
    self.out[dst + ".running_mean"] = self.stats[f"{src}/mean"]
    self.out[dst + ".running_var"] = self.stats[f"{src}/var"]
    self.out[dst + ".num_batches_tracked"] = np.zeros((), np.int64)

  def conv_bn(self, dst_conv: str, dst_bn: str, src: str):
    """vitjax ConvBN `src` (`src/conv`, `src/bn`) -> a torch conv and BatchNorm."""
    self.conv(dst_conv, src + "/conv")
    self.batchnorm(dst_bn, src + "/bn")

  def finish(self, what: str) -> Dict[str, np.ndarray]:
    """The state dict; raises if any param was not written."""
    rest = sorted(set(self.params) - self.used)
    if rest:
      raise UserError(f"These params have no place in a {what} state dict: "
                      f"{_short_list(rest)}. The model is a variant {what} does not have.")
    return self.out


def hf_labels(num_classes: int) -> Dict[str, Any]:
  """config.json's id2label / label2id for `num_classes` classes (LABEL_i; export_hf
  puts a run's class names in)."""
  if not num_classes:
    return {}
  return {"id2label": {str(i): f"LABEL_{i}" for i in range(num_classes)},
          "label2id": {f"LABEL_{i}": i for i in range(num_classes)}}
