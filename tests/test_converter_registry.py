"""The converter contract, checked for every registered converter.

Each (family, source) converter, run on a small randomly initialised HF / timm
reference (the parity tests' configs, or smaller), must return a `Converted`:
variables with 'params' (and 'batch_stats' exactly when the model has
BatchNorm statistics), a `model_name` from `list_models()`, and kwargs such
that `create_model(model_name, **model_kwargs).init` gives exactly the
converted variables' names and shapes. HF converters must also list the
reference's `model_type` and architecture. A converter registered without a
case here fails `test_every_converter_has_a_case`.
"""

import dataclasses

import jax
import numpy as np
import pytest

from vitjax.convert import Converted, convert_checkpoint, get_converter, list_converters
from vitjax.convert.common import flatten_params
from vitjax.errors import UserError
from vitjax.models import list_models
from oracle import init_shapes

try:
  from torchvision_stub import import_timm
except ImportError:  # tests/ imported as a package
  from tests.torchvision_stub import import_timm


def _resnet_backbone(transformers, sizes, out):
  return transformers.ResNetConfig(embedding_size=8, hidden_sizes=sizes, depths=[1] * len(sizes),
                                   layer_type="basic", out_features=out)


def _nat_module(monkeypatch):
  """transformers' DiNAT module, importable with natten's old kernels stubbed out (no
  forward pass is run here)."""
  pytest.importorskip("natten", reason="natten (the DiNAT oracle's kernels) is not installed")
  import natten.functional  # pylint: disable=g-import-not-at-top
  for name in ("natten2dqkrpb", "natten2dav"):
    monkeypatch.setattr(natten.functional, name, lambda *a: None, raising=False)
  from transformers.models.dinat import modeling_dinat  # pylint: disable=g-import-not-at-top
  return modeling_dinat


# (family, source) -> builder(lib, monkeypatch) -> (reference model, config or None,
# converter kwargs, input size). `lib` is transformers (hf) or timm.
def _vit_hf(t, _):
  cfg = t.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=64, image_size=32, patch_size=8, num_labels=5)
  return t.ViTForImageClassification(cfg), cfg, {}, 32


def _vit_timm(timm, _):
  ref = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, embed_dim=32,
                          depth=2, num_heads=2, num_classes=5)
  return ref, None, dict(num_heads=2), 32


def _mae_hf(t, _):
  cfg = t.ViTMAEConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=48, decoder_hidden_size=24, decoder_num_hidden_layers=2,
                       decoder_num_attention_heads=3, decoder_intermediate_size=40,
                       image_size=16, patch_size=4)
  return t.ViTMAEForPreTraining(cfg), cfg, {}, 16


def _swin_hf(t, _):
  cfg = t.SwinConfig(image_size=64, patch_size=4, window_size=4, depths=[2, 2], embed_dim=32,
                     num_heads=[2, 4], num_labels=5)
  return t.SwinForImageClassification(cfg), cfg, {}, 64


def _resnet_hf(t, _):
  cfg = t.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 24], depths=[1, 3, 1],
                       layer_type="basic", num_labels=5)
  return t.ResNetForImageClassification(cfg), cfg, {}, 32


def _convnext_hf(t, _):
  cfg = t.ConvNextConfig(num_stages=4, hidden_sizes=[8, 16, 24, 32], depths=[1, 2, 1, 1],
                         num_labels=6)
  return t.ConvNextForImageClassification(cfg), cfg, {}, 64


def _efficientnet_hf(t, _):
  cfg = t.EfficientNetConfig(width_coefficient=0.25, depth_coefficient=0.3, hidden_dim=320,
                             num_labels=5)
  return t.EfficientNetForImageClassification(cfg), cfg, {}, 64


def _pvt_hf(t, _):
  cfg = t.PvtConfig(num_labels=5, image_size=64, hidden_sizes=[8, 16, 24, 32],
                    depths=[1, 2, 1, 1], num_attention_heads=[1, 2, 3, 4], mlp_ratios=[2, 2, 2, 2])
  return t.PvtForImageClassification(cfg), cfg, {}, 64


def _pvt_v2_hf(t, _):
  cfg = t.PvtV2Config(num_labels=5, hidden_sizes=[8, 16, 24, 32], depths=[1, 2, 1, 1],
                      num_attention_heads=[1, 2, 3, 4], mlp_ratios=[2, 2, 2, 2])
  return t.PvtV2ForImageClassification(cfg), cfg, {}, 64


def _segformer_hf(t, _):
  cfg = t.SegformerConfig(num_encoder_blocks=2, hidden_sizes=[8, 16], depths=[1, 1],
                          num_attention_heads=[1, 2], sr_ratios=[2, 1], patch_sizes=[7, 3],
                          strides=[4, 2], decoder_hidden_size=8, num_labels=3)
  return t.SegformerForSemanticSegmentation(cfg), cfg, {}, 32


def _cvt_hf(t, _):
  cfg = t.CvtConfig(num_labels=5, embed_dim=[8, 16, 24], num_heads=[1, 2, 3], depth=[1, 2, 3],
                    mlp_ratio=[2.0, 2.0, 2.0])
  return t.CvtForImageClassification(cfg), cfg, {}, 64


def _mobilevit_hf(t, _):
  cfg = t.MobileViTConfig(hidden_sizes=[16, 24, 32], neck_hidden_sizes=[8, 8, 16, 16, 24, 24, 48],
                          num_attention_heads=2, expand_ratio=2.0, num_labels=5)
  return t.MobileViTForImageClassification(cfg), cfg, {}, 64


def _mobilevitv2_hf(t, _):
  cfg = t.MobileViTV2Config(width_multiplier=0.25, n_attn_blocks=[1, 2, 1], num_labels=5)
  return t.MobileViTV2ForImageClassification(cfg), cfg, {}, 64


def _nat_hf(t, monkeypatch):
  cfg = t.DinatConfig(num_labels=5, embed_dim=16, depths=[2, 2], num_heads=[1, 2], kernel_size=3,
                      dilations=[[1, 3], [1, 1]], mlp_ratio=2.0, layer_scale_init_value=0.5)
  return _nat_module(monkeypatch).DinatForImageClassification(cfg), cfg, {}, 40


def _crossvit_timm(timm, _):
  ref = timm.create_model("crossvit_tiny_240", embed_dim=[16, 32], depth=[[1, 2, 0], [1, 2, 0]],
                          num_heads=[2, 4], mlp_ratio=[2, 3, 1], num_classes=7)
  return ref, None, dict(num_heads=(2, 4)), 240


def _vit_hybrid_timm(timm, _):
  ref = timm.create_model("vit_small_r26_s32_224", img_size=64, embed_dim=32, depth=1,
                          num_heads=2, num_classes=7)
  return ref, None, dict(num_heads=2), 64


def _detr_hf(t, _):
  cfg = t.DetrConfig(
      backbone_config=_resnet_backbone(t, [8, 16, 24], ["stage3"]), use_timm_backbone=False,
      use_pretrained_backbone=False, d_model=16, encoder_layers=1, decoder_layers=2,
      encoder_ffn_dim=24, decoder_ffn_dim=24, encoder_attention_heads=2,
      decoder_attention_heads=2, num_labels=3, num_queries=5)
  return t.DetrForObjectDetection(cfg), cfg, {}, 64


def _deformable_detr_hf(t, _):
  cfg = t.DeformableDetrConfig(
      backbone_config=_resnet_backbone(t, [8, 16, 24, 32], ["stage2", "stage3", "stage4"]),
      use_timm_backbone=False, use_pretrained_backbone=False, d_model=32, encoder_layers=1,
      decoder_layers=2, encoder_ffn_dim=24, decoder_ffn_dim=24, encoder_attention_heads=2,
      decoder_attention_heads=2, num_labels=3, num_queries=6, encoder_n_points=3,
      decoder_n_points=2)
  return t.DeformableDetrForObjectDetection(cfg), cfg, {}, 64


def _conditional_detr_hf(t, _):
  cfg = t.ConditionalDetrConfig(
      backbone_config=_resnet_backbone(t, [8, 16, 24, 32], ["stage4"]), use_timm_backbone=False,
      use_pretrained_backbone=False, d_model=32, encoder_layers=1, decoder_layers=2,
      encoder_ffn_dim=24, decoder_ffn_dim=24, encoder_attention_heads=2,
      decoder_attention_heads=2, num_queries=7, num_labels=4)
  return t.ConditionalDetrForObjectDetection(cfg), cfg, {}, 64


def _maskformer_hf(t, _):
  bc = t.SwinConfig(embed_dim=16, depths=[1, 2, 1, 1], num_heads=[1, 2, 2, 4], window_size=2,
                    image_size=64, out_features=["stage1", "stage2", "stage3", "stage4"])
  cfg = t.MaskFormerConfig(
      backbone_config=bc, use_pretrained_backbone=False, num_labels=5, fpn_feature_size=32,
      mask_feature_size=32, decoder_config=dict(
          model_type="detr", d_model=32, decoder_layers=2, decoder_attention_heads=4,
          decoder_ffn_dim=64, num_queries=6))
  return t.MaskFormerForInstanceSegmentation(cfg), cfg, {}, 64


CASES = {
    ("vit", "hf"): _vit_hf, ("vit", "timm"): _vit_timm, ("mae", "hf"): _mae_hf,
    ("swin", "hf"): _swin_hf, ("resnet", "hf"): _resnet_hf, ("convnext", "hf"): _convnext_hf,
    ("efficientnet", "hf"): _efficientnet_hf, ("pvt", "hf"): _pvt_hf,
    ("pvt_v2", "hf"): _pvt_v2_hf, ("segformer", "hf"): _segformer_hf, ("cvt", "hf"): _cvt_hf,
    ("mobilevit", "hf"): _mobilevit_hf, ("mobilevitv2", "hf"): _mobilevitv2_hf,
    ("nat", "hf"): _nat_hf, ("crossvit", "timm"): _crossvit_timm,
    ("vit_hybrid", "timm"): _vit_hybrid_timm, ("detr", "hf"): _detr_hf,
    ("deformable_detr", "hf"): _deformable_detr_hf,
    ("conditional_detr", "hf"): _conditional_detr_hf, ("maskformer", "hf"): _maskformer_hf,
}


def test_every_converter_has_a_case():
  registered = {(c.family, c.source) for c in list_converters()}
  assert registered == set(CASES), (
      f"no contract case for {sorted(registered - set(CASES))}; "
      f"cases without a converter: {sorted(set(CASES) - registered)}")
  for c in list_converters():
    assert callable(c.fn) and bool(c.model_types and c.architectures) == (c.source == "hf"), c


def test_lookup_errors_name_the_registered_converters():
  assert get_converter("swin", "hf").family == "swin"
  with pytest.raises(UserError, match="Did you mean swin/hf"):
    get_converter("swim", "hf")
  with pytest.raises(UserError, match="Unknown weight source"):
    convert_checkpoint({}, "vit", source="keras")


def test_model_name_is_the_nearest_registered_model():
  from vitjax.convert.registry import converted  # pylint: disable=g-import-not-at-top
  from vitjax.models.vit import VisionTransformer  # pylint: disable=g-import-not-at-top
  base = dict(hidden_size=768, depth=12, num_heads=12, mlp_dim=3072, patch_size=16)
  assert converted({}, VisionTransformer, base).model_name == "vit_base_patch16_224"
  small = dict(hidden_size=384, depth=12, num_heads=6, mlp_dim=1536, patch_size=16)
  out = converted({}, VisionTransformer, dict(small, distilled=True, num_classes=7))
  assert out.model_name == "deit_small_distilled_patch16_224"
  assert out.model_kwargs == dict(small, distilled=True, num_classes=7)


def test_convert_checkpoint_reads_a_snapshot_folder(transformers, tmp_path):
  ref, cfg, _, _ = _vit_hf(transformers, None)
  ref.save_pretrained(tmp_path / "snap", safe_serialization=True)
  out = convert_checkpoint(str(tmp_path / "snap"), "vit")  # num_heads from config.json
  assert out.model_kwargs["num_heads"] == cfg.num_attention_heads == 2
  with pytest.raises(UserError, match="config= is for source='hf'"):
    convert_checkpoint(str(tmp_path / "snap"), "vit", source="timm", config={})


def _shapes(tree):
  return {k: tuple(np.shape(v)) for k, v in flatten_params(tree).items()}


@pytest.fixture
def lib(request, transformers):
  """transformers, or timm (imported after transformers, with the stand-in torchvision)."""
  return import_timm() if request.param == "timm" else transformers


@pytest.mark.parametrize("key,lib", [(k, k[1]) for k in sorted(CASES)],
                         ids=[f"{f}-{s}" for f, s in sorted(CASES)], indirect=["lib"])
def test_converter_contract(key, lib, torch, monkeypatch):
  family, source = key
  ref, cfg, kwargs, size = CASES[key](lib, monkeypatch)
  info = get_converter(family, source)
  if source == "hf":
    assert cfg.model_type in info.model_types, (cfg.model_type, info.model_types)
    assert type(ref).__name__ in info.architectures, (type(ref).__name__, info.architectures)
  state_dict = {k: v.numpy() for k, v in ref.state_dict().items()}
  with torch.no_grad():
    out = info(state_dict, cfg, **kwargs) if source == "hf" else info(state_dict, **kwargs)

  assert isinstance(out, Converted)
  assert "params" in out.variables and out.params is out.variables["params"]
  assert out.model_name in list_models(), out.model_name
  model = out.create_model()
  # The kwargs alone rebuild the same module: the registered factory adds nothing.
  rebuilt = type(model)(**out.model_kwargs)
  for f in dataclasses.fields(model):
    if f.name not in ("parent", "name"):
      assert getattr(rebuilt, f.name) == getattr(model, f.name), f.name
  want = init_shapes(model, size)
  assert sorted(out.variables) == sorted(want), (sorted(out.variables), sorted(want))
  for collection in want:
    got, expected = _shapes(out.variables[collection]), _shapes(want[collection])
    assert got == expected, {k: (got.get(k), expected.get(k)) for k in set(got) | set(expected)
                             if got.get(k) != expected.get(k)}
  assert all(isinstance(x, np.ndarray) for x in jax.tree_util.tree_leaves(out.variables))
