"""Shared pieces of the parity tests: re-draw a torch reference, compare, count.

`randomize` re-draws every parameter of a (tiny, randomly initialised) HF /
timm model so that no tensor keeps a default value a converter could get
wrong unnoticed (zero biases, unit norms, zero tokens); `assert_close` /
`max_abs_diff` compare outputs; `n_params` / `count_params` count parameters.
Imported by the tests as `from oracle import ...` (pytest puts tests/ on
sys.path).
"""

from typing import Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np


def randomize(model, seed: int = 0, *, std: float = 0.05, norms: Sequence[str] = ("LayerNorm",),
              norm_suffix: Optional[str] = None, fan_in: bool = False,
              wide: Union[Sequence[str], Callable[[str], bool]] = (), wide_std: float = 0.5,
              custom: Optional[Callable] = None, bn_mean_std: Optional[float] = None,
              bn_count: Optional[int] = None):
  """Re-draws every parameter of the torch `model` in place; returns `model.eval()`.

  Drawn in `named_parameters()` order after `torch.manual_seed(seed)`:
  - weights of norm layers (torch.nn classes named in `norms`, or whose class
    name ends with `norm_suffix`) ~ 1 + N(0, 0.1);
  - then `custom(name, p)` may draw `p` itself (returns True when it did);
  - names starting with one of `wide` (or where `wide(name)` holds) ~ N(0, wide_std);
  - with `fan_in`, matrices and kernels ~ N(0, 1 / fan_in);
  - everything else ~ N(0, std).
  With `bn_mean_std`, BatchNorm2d running means are then drawn ~ N(0,
  bn_mean_std), running variances ~ U(0.5, 1.5), and num_batches_tracked set
  to `bn_count` (if given).
  """
  import torch  # pylint: disable=g-import-not-at-top
  types = tuple(getattr(torch.nn, n) for n in norms)
  is_wide = wide if callable(wide) else (lambda name: bool(wide) and name.startswith(tuple(wide)))
  torch.manual_seed(seed)
  with torch.no_grad():
    scales = {id(m.weight) for m in model.modules()
              if (isinstance(m, types) or (norm_suffix and type(m).__name__.endswith(norm_suffix)))
              and getattr(m, "weight", None) is not None}
    for name, p in model.named_parameters():
      if id(p) in scales:
        p.normal_(1.0, 0.1)
      elif custom is not None and custom(name, p):
        pass
      elif is_wide(name):
        p.normal_(0.0, wide_std)
      elif fan_in and p.ndim >= 2:
        p.normal_(0.0, float(np.prod(p.shape[1:])) ** -0.5)
      else:
        p.normal_(0.0, std)
    if bn_mean_std is not None:
      for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
          m.running_mean.normal_(0.0, bn_mean_std)
          m.running_var.uniform_(0.5, 1.5)
          if bn_count is not None:
            m.num_batches_tracked.fill_(bn_count)
  return model.eval()


def redraw(model, seed: int, is_norm: Callable[[str], bool], tensors: str = "named"):
  """Re-draws every floating-point parameter and buffer with a torch Generator:
  running variances ~ U(0.5, 1.5), 1-D weights where `is_norm(name)` ~ 1 + 0.2 N(0, 1),
  everything else (BatchNorm running means included) ~ 0.2 N(0, 1).

  tensors: 'named' (named_parameters() then named_buffers()) or 'state_dict'
  (state_dict() order): the order the tensors are drawn in.
  """
  import torch  # pylint: disable=g-import-not-at-top
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    if tensors == "state_dict":
      items = list(model.state_dict().items())
    else:
      items = list(model.named_parameters()) + list(model.named_buffers())
    for name, t in items:
      if not t.is_floating_point():
        continue
      if name.endswith("running_var"):
        t.copy_(torch.rand(t.shape, generator=g) + 0.5)
      elif is_norm(name) and name.endswith("weight") and t.ndim == 1:
        t.copy_(1.0 + 0.2 * torch.randn(t.shape, generator=g))
      else:
        t.copy_(0.2 * torch.randn(t.shape, generator=g))


def max_abs_diff(ref, got) -> float:
  """max |ref - got| of two arrays of the same shape."""
  ref, got = np.asarray(ref), np.asarray(got)
  assert ref.shape == got.shape, f"shapes differ: reference {ref.shape}, vitjax {got.shape}"
  return float(np.max(np.abs(ref - got)))


def assert_close(case: str, ref, got, tol: float) -> float:
  """Asserts max |ref - got| <= tol on a non-degenerate reference; returns the diff."""
  ref, got = np.asarray(ref), np.asarray(got)
  diff = max_abs_diff(ref, got)
  print(f"\n{case}: max |diff| {diff:.2e} (|ref| max {np.max(np.abs(ref)):.2f})")
  assert np.std(ref) > 0.1, "reference output is degenerate"
  assert diff <= tol, f"{case}: max abs diff {diff}"
  return diff


def n_params(tree) -> int:
  """The number of scalars in a pytree of arrays (or of ShapeDtypeStructs)."""
  return sum(int(np.prod(v.shape)) for v in jax.tree_util.tree_leaves(tree))


def init_shapes(model, size=224, channels: int = 3):
  """`model.init`'s variables as ShapeDtypeStructs (no compute) for a (size x size) input."""
  h, w = (size, size) if isinstance(size, int) else size
  x = jax.ShapeDtypeStruct((1, h, w, channels), jnp.float32)
  return jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), x)


def count_params(model, size=224, **overrides) -> int:
  """Parameters of a flax module (or registered model name, built with `overrides`)."""
  if isinstance(model, str):
    from vitjax.models import create_model  # pylint: disable=g-import-not-at-top
    model = create_model(model, **overrides)
  return n_params(init_shapes(model, size)["params"])
