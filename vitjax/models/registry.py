"""The model registry: the only way the trainer finds a model.

Model files register factories with `@register_model`; `create_model(name,
**overrides)` builds the flax module, `list_models()` lists the names.
"""

import fnmatch
import importlib
import pkgutil
from typing import Callable, Dict

from vitjax.errors import UserError

_REGISTRY: Dict[str, Callable] = {}
_LOADED = False


def register_model(fn: Callable = None, *, name: str = None):
  """Decorator: registers `fn(**overrides) -> nn.Module` under its name."""
  def wrap(f):
    key = name or f.__name__
    if key in _REGISTRY and _REGISTRY[key] is not f:
      raise ValueError(f"model {key!r} registered twice")
    _REGISTRY[key] = f
    return f
  return wrap(fn) if fn is not None else wrap


def _load_all():
  """Imports every module of `vitjax.models` so that they can register."""
  global _LOADED
  if _LOADED:
    return
  import vitjax.models as pkg  # pylint: disable=g-import-not-at-top
  for info in pkgutil.iter_modules(pkg.__path__):
    if info.name not in ("registry", "layers") and not info.name.startswith("_"):
      importlib.import_module(f"vitjax.models.{info.name}")
  _LOADED = True


def list_models(pattern: str = "*"):
  """Sorted registered names matching a shell-style `pattern`."""
  _load_all()
  return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def create_model(name: str, **overrides):
  """Builds the registered model `name`; `overrides` replace its defaults."""
  _load_all()
  if name not in _REGISTRY:
    import difflib  # pylint: disable=g-import-not-at-top
    close = difflib.get_close_matches(name, _REGISTRY, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise UserError(f"Unknown model {name!r}.{hint} vitjax.models.list_models() "
                    "lists all registered names.")
  try:
    return _REGISTRY[name](**overrides)
  except TypeError as e:
    raise UserError(f"Bad override for model {name!r}: {e}. Check the keys of "
                    "config.model (they are passed to create_model).") from e
