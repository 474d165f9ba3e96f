"""The model registry: the only way the trainer finds a model.

Model files register factories with `@register_model`; `create_model(name,
**overrides)` builds the flax module, `list_models()` lists the names.

Model files also register their checkpoint fixes next to the model, with
`@register_checkpoint_fix(ModelClass)`: `fix(key, value, shape, model)`
returns `value` adapted to the model's `shape` (a position embedding of
another grid, a bias table of another window) or None when it does not apply.
Fine-tuning (`vitjax.checkpoint.merge_params`) calls them through
`checkpoint_fixes(model)`; `register_checkpoint_source(Model, Other)` says that
checkpoints of `Other` load into `Model` (e.g. an MAE's encoder into a ViT).
"""

import fnmatch
import importlib
import pkgutil
from typing import Callable, Dict, List, Set

from vitjax.errors import UserError

_REGISTRY: Dict[str, Callable] = {}
_FIXES: Dict[type, List[Callable]] = {}
_SOURCES: Dict[type, Set[type]] = {}
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


def register_checkpoint_fix(*model_classes):
  """Decorator: `fn(key, value, shape, model) -> array | None` adapts checkpoints
  of these model classes to a new input resolution / window size."""
  def wrap(fn):
    for cls in model_classes:
      if fn not in _FIXES.setdefault(cls, []):
        _FIXES[cls].append(fn)
    return fn
  return wrap


def checkpoint_fixes(model=None) -> List[Callable]:
  """The checkpoint fixes registered for `model`'s class (every fix when None)."""
  _load_all()
  if model is not None:
    return list(_FIXES.get(type(model), ()))
  return list(dict.fromkeys(fn for fns in _FIXES.values() for fn in fns))


def register_checkpoint_source(model_cls, *source_classes):
  """Declares that checkpoints of `source_classes` load into `model_cls`."""
  _SOURCES.setdefault(model_cls, set()).update(source_classes)


def loads_from(model_cls, source_cls) -> bool:
  """Whether a checkpoint of a `source_cls` model loads into a `model_cls` one."""
  _load_all()
  return source_cls is model_cls or source_cls in _SOURCES.get(model_cls, ())
