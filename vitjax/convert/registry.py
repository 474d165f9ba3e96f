"""The converter registry: one entry per (model family, weight source).

Each converter registers itself next to its code:

  @register_converter(family="swin", source="hf", model_types=("swin", "swinv2"),
                      architectures=("SwinForImageClassification", ...))
  def hf_swin_to_vitjax(state_dict, config=None, **overrides) -> Converted: ...

and returns a `Converted`: the flax variables ('params', plus 'batch_stats'
for models with BatchNorm), the registered vitjax model name and the kwargs
that make `vitjax.models.create_model(model_name, **model_kwargs)` the module
the variables belong to. HF converters take `(state_dict, config=None,
**overrides)`, timm ones `(state_dict, **overrides)`.

`get_converter(family, source)` finds one, `list_converters()` lists them all;
for HF converters `model_types` / `architectures` name the config.json values
(`model_type`, `architectures`) they read.

The way back: an exporter registers next to its family's converter,

  @register_exporter(family="swin", models=("SwinTransformer",))
  def swin_hf_snapshot(model, variables, image_size) -> (state_dict, config): ...

and turns a vitjax module (of one of the named classes) and its variables
into a Hugging Face state dict (numpy arrays, the Hub's tensor names) and the
config.json dict `from_pretrained` reads; `get_exporter(model)` finds it,
`vitjax.convert.export_hf` writes the snapshot.
"""

import dataclasses
import difflib
import importlib
import pkgutil
from typing import Any, Callable, Dict, List, Optional, Tuple

from vitjax.errors import UserError

SOURCES = ("hf", "timm")


@dataclasses.dataclass(frozen=True)
class Converted:
  """What every converter returns: variables and the registered model they load into."""
  variables: Dict[str, Any]  # {'params': ..., 'batch_stats': ... (BatchNorm models only)}
  model_name: str  # a name in vitjax.models.list_models()
  model_kwargs: Dict[str, Any]  # create_model(model_name, **model_kwargs) is the model

  @property
  def params(self) -> Dict[str, Any]:
    return self.variables["params"]

  def create_model(self, **overrides):
    """`create_model(model_name, **model_kwargs, **overrides)`: the converted model."""
    from vitjax.models import create_model  # pylint: disable=g-import-not-at-top
    return create_model(self.model_name, **{**self.model_kwargs, **overrides})


@dataclasses.dataclass(frozen=True)
class ConverterInfo:
  """A registered converter; calling it calls the converter."""
  family: str
  source: str
  fn: Callable[..., Converted]
  model_types: Tuple[str, ...] = ()  # HF config.json `model_type` values it reads
  architectures: Tuple[str, ...] = ()  # HF config.json `architectures` it reads

  def __call__(self, *args, **kwargs) -> Converted:
    return self.fn(*args, **kwargs)


_REGISTRY: Dict[Tuple[str, str], ConverterInfo] = {}
_LOADED = False


def register_converter(*, family: str, source: str, model_types=(), architectures=()):
  """Decorator: registers a converter for weights of `family` from `source`."""
  if source not in SOURCES:
    raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
  def wrap(fn):
    key = (family, source)
    if key in _REGISTRY and _REGISTRY[key].fn is not fn:
      raise ValueError(f"converter {key} registered twice")
    _REGISTRY[key] = ConverterInfo(family, source, fn, tuple(model_types),
                                   tuple(architectures))
    return fn
  return wrap


def _load_all():
  """Imports every module of `vitjax.convert` so that they can register."""
  global _LOADED
  if _LOADED:
    return
  import vitjax.convert as pkg  # pylint: disable=g-import-not-at-top
  for info in pkgutil.iter_modules(pkg.__path__):
    if info.name not in ("common", "registry") and not info.name.startswith("_"):
      importlib.import_module(f"vitjax.convert.{info.name}")
  _LOADED = True


def list_converters(source: Optional[str] = None) -> List[ConverterInfo]:
  """Every registered converter (of `source`, if given), sorted by family."""
  _load_all()
  return [info for key, info in sorted(_REGISTRY.items())
          if source is None or info.source == source]


def get_converter(family: str, source: str = "hf") -> ConverterInfo:
  """The converter for `family` weights from `source` ('hf' or 'timm')."""
  _load_all()
  if (family, source) not in _REGISTRY:
    have = sorted(f"{f}/{s}" for f, s in _REGISTRY)
    close = difflib.get_close_matches(f"{family}/{source}", have, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise UserError(f"No converter for family {family!r} from source {source!r}.{hint} "
                    f"Registered: {', '.join(have)}.")
  return _REGISTRY[(family, source)]


@dataclasses.dataclass(frozen=True)
class ExporterInfo:
  """A registered exporter: (module, variables, image_size) -> (HF state dict, config)."""
  family: str
  models: Tuple[str, ...]  # class names of the vitjax modules it writes
  fn: Callable[..., Tuple[Dict[str, Any], Dict[str, Any]]]

  def __call__(self, *args, **kwargs):
    return self.fn(*args, **kwargs)


_EXPORTERS: Dict[str, ExporterInfo] = {}


def register_exporter(*, family: str, models: Tuple[str, ...]):
  """Decorator: registers the Hugging Face exporter of `family` for modules of
  the classes named in `models`."""
  def wrap(fn):
    for cls in models:
      if cls in _EXPORTERS and _EXPORTERS[cls].fn is not fn:
        raise ValueError(f"exporter for {cls} registered twice")
      _EXPORTERS[cls] = ExporterInfo(family, tuple(models), fn)
    return fn
  return wrap


def list_exporters() -> List[ExporterInfo]:
  """Every registered Hugging Face exporter, one per family, sorted by family."""
  _load_all()
  return sorted({info.family: info for info in _EXPORTERS.values()}.values(),
                key=lambda info: info.family)


def get_exporter(model) -> ExporterInfo:
  """The Hugging Face exporter for the vitjax module `model`."""
  _load_all()
  cls = type(model).__name__
  if cls not in _EXPORTERS:
    have = ", ".join(f"{i.family} ({', '.join(i.models)})" for i in list_exporters())
    raise UserError(f"No Hugging Face exporter for {cls} models; the families with one are: "
                    f"{have}.")
  return _EXPORTERS[cls]


# ----------------------------------------------------------------------------
# The registered model a conversion loads into.

_CANDIDATES: Dict[type, List[Tuple[str, Any]]] = {}


def _fields(cls) -> List[str]:
  return [f.name for f in dataclasses.fields(cls) if f.name not in ("parent", "name")]


def _same(a, b) -> bool:
  try:
    return bool(a == b)
  except Exception:  # pylint: disable=broad-except
    return False


def _candidates(cls) -> List[Tuple[str, Any]]:
  """(name, default module) of every registered model whose factory builds `cls`."""
  if cls not in _CANDIDATES:
    from vitjax.models import create_model, list_models  # pylint: disable=g-import-not-at-top
    found = []
    for name in list_models():
      try:
        m = create_model(name)
      except Exception:  # pylint: disable=broad-except  (factories that need arguments)
        continue
      if type(m) is cls:
        found.append((name, m))
    _CANDIDATES[cls] = found
  return _CANDIDATES[cls]


def converted(variables: Dict[str, Any], model_cls, model_kwargs: Dict[str, Any]
              ) -> Converted:
  """Packs a converter's result for `model_cls(**model_kwargs)` into a `Converted`.

  The model name is the registered model of that class whose defaults agree
  with the converted model on the most fields (ViT-B/16 weights give
  'vit_base_patch16_224'). Fields the name's factory sets differently and the
  converter did not set are added to the kwargs, so that
  `create_model(model_name, **model_kwargs)` equals `model_cls(**model_kwargs)`.
  """
  from vitjax.models import create_model  # pylint: disable=g-import-not-at-top
  ref = model_cls(**model_kwargs)
  fields = _fields(model_cls)
  ranked = sorted((-sum(_same(getattr(default, f), getattr(ref, f)) for f in fields),
                   len(name), name) for name, default in _candidates(model_cls))
  if not ranked:
    raise ValueError(f"no registered model builds {model_cls.__name__}")
  best = ranked[0][2]  # most fields in common; on a tie the shortest name (vit_* over deit_*)
  kwargs = dict(model_kwargs)
  built = create_model(best, **kwargs)
  for f in fields:
    if f not in kwargs and not _same(getattr(built, f), getattr(ref, f)):
      kwargs[f] = getattr(ref, f)
  return Converted(variables=variables, model_name=best, model_kwargs=kwargs)
