"""A stand-in `torchvision`, present only while `timm` is being imported.

timm imports torchvision at module level (transforms, datasets, ops.misc) but
building a ViT never calls into it, and there is no CPU torchvision build to
install next to the pinned torch here. `import_timm()` puts fake modules into
`sys.modules`, imports timm, and removes them again. A real torchvision, when
one is installed, is always preferred.

The stand-ins give timm's imports what they need: `InterpolationMode` (a real
enum, used in dict keys at import time), `FrozenBatchNorm2d` (an nn.Module
used in isinstance checks), and for any other attribute a placeholder class
(capitalised names, so that subclassing works) or a function that raises if
it is ever called.
"""

import contextlib
import enum
import importlib
import importlib.machinery
import importlib.util
import sys
import types

_SUBMODULES = (
    "torchvision",
    "torchvision.transforms",
    "torchvision.transforms.functional",
    "torchvision.transforms.v2",
    "torchvision.datasets",
    "torchvision.ops",
    "torchvision.ops.misc",
    "torchvision.utils",
)


class InterpolationMode(enum.Enum):
  NEAREST = "nearest"
  NEAREST_EXACT = "nearest-exact"
  BILINEAR = "bilinear"
  BICUBIC = "bicubic"
  BOX = "box"
  HAMMING = "hamming"
  LANCZOS = "lanczos"


def _frozen_batch_norm_cls():
  import torch  # pylint: disable=g-import-not-at-top

  class FrozenBatchNorm2d(torch.nn.Module):
    """BatchNorm2d with fixed statistics (same buffers as torchvision's)."""

    def __init__(self, num_features, eps=1e-5):
      super().__init__()
      self.eps = eps
      self.register_buffer("weight", torch.ones(num_features))
      self.register_buffer("bias", torch.zeros(num_features))
      self.register_buffer("running_mean", torch.zeros(num_features))
      self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x):
      scale = self.weight * (self.running_var + self.eps).rsqrt()
      bias = self.bias - self.running_mean * scale
      return x * scale.reshape(1, -1, 1, 1) + bias.reshape(1, -1, 1, 1)

  return FrozenBatchNorm2d


class _StubModule(types.ModuleType):
  """A module that invents a harmless placeholder for any missing name."""

  def __getattr__(self, name):
    if name.startswith("__"):
      raise AttributeError(name)
    qualname = f"{self.__name__}.{name}"
    if name[:1].isupper():
      def init(self_, *args, **kwargs):
        del self_, args, kwargs
      value = type(name, (), {"__init__": init, "__module__": self.__name__,
                              "__doc__": f"torchvision stand-in for {qualname}"})
    else:
      def value(*args, **kwargs):
        raise NotImplementedError(
            f"{qualname} is a torchvision stand-in (tests/torchvision_stub.py)")
      value.__name__ = name
    setattr(self, name, value)
    return value


def _make_stubs():
  mods = {}
  for name in _SUBMODULES:
    mod = _StubModule(name)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
    mod.__path__ = []
    mod.__file__ = __file__
    mods[name] = mod
  for name, mod in mods.items():
    parent, _, child = name.rpartition(".")
    if parent:
      setattr(mods[parent], child, mod)
  mods["torchvision"].__version__ = "0.0.0+stub"
  mods["torchvision.transforms.functional"].InterpolationMode = InterpolationMode
  mods["torchvision.transforms"].InterpolationMode = InterpolationMode
  mods["torchvision.ops.misc"].FrozenBatchNorm2d = _frozen_batch_norm_cls()
  return mods


@contextlib.contextmanager
def torchvision_stub():
  """Inserts the stand-in modules into sys.modules for the `with` body only."""
  if "torchvision" in sys.modules or importlib.util.find_spec("torchvision"):
    yield  # A real torchvision is there: use it.
    return
  mods = _make_stubs()
  sys.modules.update(mods)
  try:
    yield
  finally:
    for name in mods:
      if sys.modules.get(name) is mods[name]:
        del sys.modules[name]


def import_timm():
  """Imports timm with the stand-in torchvision (skips the test if absent)."""
  import pytest  # pylint: disable=g-import-not-at-top
  pytest.importorskip("torch")
  if importlib.util.find_spec("timm") is None:
    pytest.skip("timm is not installed (pip install timm --no-deps)")
  with torchvision_stub():
    return importlib.import_module("timm")
