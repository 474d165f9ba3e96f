"""The backbone contract: the feature maps and the block order a model declares.

Dense heads (DETR, Deformable / Conditional DETR, MaskFormer, SegFormer's
decoder), SimMIM and the optimizer's fine-tuning controls read a backbone only
through this module; none of them parses `out` keys or parameter names.

Feature levels
--------------
`feature_levels(model)` -> a tuple of `FeatureLevel(name, stride, channels)`,
computed from the model's fields (the model is not run), ordered fine to
coarse (strides never decrease):

  name      the key of `out` (the model returns `(logits, out)`) that holds it;
  stride    input pixels per map position: an H x W input gives a map of
            about H / stride x W / stride (exactly, when stride divides the
            sides; otherwise rounded as the family's reference does: Swin and
            NAT pad, so up; strided convolutions floor);
  channels  the map's last axis.

Every map is NHWC `[B, H / stride, W / stride, channels]` in the model's
compute dtype.

Key layout: a hierarchical backbone names its levels 'stage_0', 'stage_1', ...
in forward order. Stage i is the output of the i-th run of blocks at one
resolution, including that stage's own downsampling at its start (patch
merging, strided conv, patch embedding) and its own closing norm where the
family has one (PVT v2 / SegFormer's encoder), and before the model's final
norm. Stage 0 is the family's first stage whatever its stride:

  ResNet          stage_0..3   4, 8, 16, 32 (1, 2, 4, 8 with small_stem)
  ConvNeXt        stage_0..3   p, 2p, 4p, 8p (p = patch_size, 4)
  Swin v1 / v2    stage_0..3   p, 2p, 4p, 8p (p = patch_size, 4)
  Focal           stage_0..3   p, 2p, 4p, 8p
  NAT / DiNAT     stage_0..3   4, 8, 16, 32 (the two-conv tokenizer is stride 4)
  PVT v1 / v2     stage_0..3   products of the patch-embedding strides (4, 8, 16, 32)
  SegFormer       stage_0..3   its MiT encoder's (= PVT v2's) maps
  CvT             stage_0..2   products of patch_strides (4, 8, 16)
  MobileViT v1/v2 stage_0..4   2, 4, 8, 16, 32 (stage 0 is the stride-2 MobileNet block)
  EfficientNet    stage_0..6   B0 table: 2, 4, 8, 16, 16, 32, 32 (two pairs share a stride)
  Hybrid ViT      stage_0..n-1 of its ResNet (4, 8, 16, ...), then 'feature_map'
                               (the ViT tokens at the CNN's total stride)

Isotropic models declare one level, 'feature_map' (the patch tokens after the
final norm, stride = patch size): ViT, DeiT, LV-ViT, the DINO / MoCo / MAE /
SimMIM ViT encoders, and CrossViT (its first, small-patch branch). Where two
levels share a stride, the deeper one is "the map at that stride".

`select_features(model, out, levels=..., strides=...)` hands a dense head the
maps it asks for: by level index (or name), by stride, every level
(`levels='all'`), or (neither) one map per distinct stride, fine to coarse.
`select_levels` gives the same levels without `out` (their channels size a head's layers before any call).

Dense heads build their backbone with `create_backbone(name, kwargs)`: any
registered backbone by name, plus overrides, under the parameter name
'backbone'.

Plain ViTs in dense heads (ViTDet's simple feature pyramid): a backbone with
one stride (ViT, DeiT, ...) is wrapped in `layers.simple_pyramid.
PyramidBackbone`, which turns its map into levels 'pyramid_<stride>' (from a
stride-16 map: 8, 16, 32, 64 by deconvolution, identity, max-pool and a top
max-pool, each through 1x1 + 3x3 convs with LayerNorm, 256 wide). Who asks:
- the head, for heads that need several strides (MaskFormer, Deformable
  DETR) call `create_backbone(..., multi_scale=True)`: a single-stride
  backbone is wrapped automatically; hierarchical ones are left as they are;
- the user, for any head, with `backbone_kwargs={'simple_pyramid': ...}`:
  True (the defaults), False (never, even for a multi-scale head), or a dict
  of PyramidBackbone settings (`out_channels`, `scale_factors` from
  (4.0, 2.0, 1.0, 0.5), `top_maxpool`). DETR / Conditional DETR read one map
  (the coarsest), so a plain ViT feeds them its stride-16 map unless asked.
A wrapped ViT resamples its learned position embedding to every input's
grid (`posemb_interpolate=True`, unless set), so it runs at any input size.

Block order (fine-tuning controls)
----------------------------------
`layer_groups(model)` -> a tuple of groups of parameter paths ('a/b' prefixes
of the flattened param tree), in forward order: group 0 holds the embeddings
(layer id 0), group l (1..L) the l-th block with the stage modules that go
with it (a stage's downsampling with its first block, its closing norm with
its last). Every parameter under no listed prefix (the final norm, heads) has
id L + 1. vitjax/optim.py's layer-wise lr decay and freeze-by-depth use these
ids; `stage_layer_groups` writes the groups of the usual staged layout.
"""

import dataclasses
from typing import Any, Mapping, Optional, Sequence, Tuple, Union

from vitjax.errors import UserError


@dataclasses.dataclass(frozen=True)
class FeatureLevel:
  """One feature map a backbone returns: `out[name]`, `stride`, `channels`."""
  name: str
  stride: int
  channels: int


def feature_levels(model) -> Tuple[FeatureLevel, ...]:
  """The feature levels `model` declares (fine to coarse), without running it."""
  fn = getattr(model, "feature_levels", None)
  if fn is None:
    raise UserError(f"{type(model).__name__} declares no feature levels, so it cannot be a "
                    "backbone; see vitjax/models/features.py for the contract.")
  levels = tuple(fn())
  if not levels:
    raise UserError(f"{type(model).__name__} with these settings returns no feature map "
                    "(e.g. ViT with token merging, tome_r > 0); use it without them.")
  return levels


def select_levels(model, levels: Optional[Sequence[Union[int, str]]] = None,
                  strides: Optional[Sequence[int]] = None) -> Tuple[FeatureLevel, ...]:
  """The declared levels a head asks for: by index / name, by stride, or one
  per distinct stride (the deepest at each), fine to coarse."""
  declared = feature_levels(model)
  if levels is not None and strides is not None:
    raise UserError("select_features: give levels or strides, not both.")
  by_stride = {}
  for lv in declared:  # the deeper level wins a shared stride
    by_stride[lv.stride] = lv
  if isinstance(levels, str) and levels == "all":
    return declared
  if levels is not None:
    names = {lv.name: lv for lv in declared}
    picked = []
    for i in levels:
      if isinstance(i, str):
        if i not in names:
          raise UserError(f"{type(model).__name__} has no feature level {i!r}; it has "
                          f"{sorted(names)}.")
        picked.append(names[i])
      elif -len(declared) <= i < len(declared):
        picked.append(declared[i])
      else:
        raise UserError(f"{type(model).__name__} has {len(declared)} feature levels "
                        f"(0..{len(declared) - 1}), not level {i}.")
    return tuple(picked)
  if strides is not None:
    missing = [s for s in strides if s not in by_stride]
    if missing:
      raise UserError(f"{type(model).__name__} has no feature map at stride "
                      f"{', '.join(map(str, missing))}; its strides are "
                      f"{sorted(by_stride)}. Ask for those, or pick another backbone.")
    return tuple(by_stride[s] for s in strides)
  return tuple(by_stride[s] for s in sorted(by_stride))


def select_features(model, out: Mapping[str, Any],
                    levels: Optional[Sequence[Union[int, str]]] = None,
                    strides: Optional[Sequence[int]] = None) -> list:
  """The maps `out[level.name]` of `select_levels(model, levels, strides)`."""
  picked = select_levels(model, levels, strides)
  missing = [lv.name for lv in picked if lv.name not in out]
  if missing:
    raise ValueError(f"{type(model).__name__} declares feature levels {missing} that its "
                     f"`out` lacks (it has {sorted(out)}): the model breaks the contract.")
  return [out[lv.name] for lv in picked]


def create_backbone(backbone: Union[str, Mapping[str, Any], None],
                    backbone_kwargs: Optional[Mapping[str, Any]] = None, *,
                    multi_scale: bool = False, **fixed):
  """The unbound backbone of a dense head: a registry name plus overrides
  (`fixed` last; `num_classes=0` always), or a dict of ResNet keyword
  arguments (the named detectors' and the HF converters' form). A
  single-stride backbone gets the simple feature pyramid when `multi_scale`
  (the head needs several strides) or `simple_pyramid` in the kwargs asks
  (module docstring)."""
  from vitjax.models.registry import create_model  # pylint: disable=g-import-not-at-top
  kw = dict(backbone_kwargs or {})
  if backbone is None or not isinstance(backbone, str):
    kw = {"depth": 50, **dict(backbone or {}), **kw}
    backbone = "resnet50"
  pyramid = kw.pop("simple_pyramid", None)
  kw.update(fixed, num_classes=0)
  model = create_model(backbone, **kw)
  levels = feature_levels(model)  # a clear error now for a model that is no backbone
  if pyramid is None:
    pyramid = multi_scale and len({lv.stride for lv in levels}) == 1
  if not pyramid:
    return model
  from vitjax.models.layers.simple_pyramid import PyramidBackbone  # pylint: disable=g-import-not-at-top
  settings = dict(pyramid) if isinstance(pyramid, Mapping) else {}
  unknown = set(settings) - {"out_channels", "scale_factors", "top_maxpool"}
  if unknown:
    raise UserError(f"simple_pyramid settings {sorted(unknown)} are unknown; use "
                    "out_channels, scale_factors, top_maxpool.")
  extra = {"posemb_interpolate": True} if (
      hasattr(model, "posemb_interpolate") and "posemb_interpolate" not in kw) else {}
  if "dtype" in fixed:
    settings.setdefault("dtype", fixed["dtype"])
  # parent=None: both are adopted where the head binds the wrapper (not where
  # this is called, which may be inside the head's compact __call__).
  wrapped = PyramidBackbone(model.clone(parent=None, **extra), parent=None, **settings)
  feature_levels(wrapped)
  return wrapped


def stage_layer_groups(stem: Sequence[str], depths: Sequence[int],
                       block: str = "stage_{i}_block_{j}", first: Sequence[str] = (),
                       last: Sequence[str] = (), prefix: str = ""):
  """Layer groups of the usual staged layout: `stem` (id 0), then one group
  per block named `block.format(i=stage, j=index)`; the names in `first` /
  `last` (formatted with i) join a stage's first / last block."""
  groups = [tuple(prefix + s for s in stem)]
  for i, d in enumerate(depths):
    for j in range(d):
      g = [block.format(i=i, j=j)]
      if j == 0:
        g = [f.format(i=i) for f in first] + g
      if j == d - 1:
        g += [f.format(i=i) for f in last]
      groups.append(tuple(prefix + n for n in g))
  return tuple(groups)


def layer_groups(model) -> Tuple[Tuple[str, ...], ...]:
  """The block order `model` declares (see the module docstring)."""
  fn = getattr(model, "layer_groups", None)
  if fn is None:
    raise UserError(f"{type(model).__name__} declares no block order (layer_groups), so "
                    "layer-wise lr decay and freeze_depth do not apply to it; see "
                    "vitjax/models/features.py.")
  return tuple(tuple(g) for g in fn())
