"""Any input size, the way each backbone's reference does it: parity with HF
transformers at sizes that divide nothing (97x131, 100x150), and a clear
refusal where the reference itself refuses.

Each reference is a tiny, randomly initialised HF model (every parameter
re-drawn by oracle.randomize), converted with vitjax's registered converter
(`get_converter(family, 'hf')`); logits (SegFormer: the logit map) must agree
within 1e-4 in float32. Swin pads to the patch / window multiple and crops
back, PVT v2 / SegFormer / ConvNeXt / ResNet floor their strided
convolutions, ViT interpolates its position embedding (HF's
`interpolate_pos_encoding=True`), PVT v1 its per-stage ones (the official
code's formula; HF's own reshapes the stored grid to the new one and fails),
DiNAT pads maps smaller than kernel * dilation.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vitjax.convert.registry import get_converter
from vitjax.errors import UserError
from vitjax.models import create_model
from oracle import max_abs_diff, randomize

TOL = 1e-4
SIZES = [(97, 131), (100, 150)]
FIGURES = {}  # (family, size) -> max abs diff, printed at the end


def _images(torch, h, w, seed=1):
  x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(seed))
  return x, jnp.asarray(np.transpose(x.numpy(), (0, 2, 3, 1)))


def _check(torch, family, ref, cfg, size, *, call=None, nhwc_out=False, label=None,
           **model_kw):
  """Runs the HF `ref` and its vitjax conversion on a size[0] x size[1] batch."""
  x, x_nhwc = _images(torch, *size)
  with torch.no_grad():
    want = (call or (lambda m, x: m(pixel_values=x).logits))(ref, x).numpy()
  if nhwc_out:
    want = want.transpose(0, 2, 3, 1)
  cv = get_converter(family, "hf")(ref.state_dict(), cfg)
  model = create_model(cv.model_name, **dict(cv.model_kwargs, **model_kw))
  got, _ = jax.jit(model.apply)(cv.variables, x_nhwc)
  assert got.shape == want.shape, (got.shape, want.shape)
  assert np.std(want) > 0.05  # not a trivially small output
  diff = max_abs_diff(want, got)
  label = label or family
  FIGURES[(label, size)] = diff
  print(f"\n{label} {size[0]}x{size[1]}: max |diff| {diff:.2e} (|ref| max "
        f"{np.abs(want).max():.2f})")
  assert diff <= TOL, diff
  return diff


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("v2", [False, True], ids=["v1", "v2"])
def test_swin(torch, transformers, v2, size):
  """Patch 4, window 4: maps 25x33 -> 13x17 -> 7x9 (97x131), each padded to
  the window multiple; odd maps padded before patch merging."""
  Config = transformers.Swinv2Config if v2 else transformers.SwinConfig
  Model = (transformers.Swinv2ForImageClassification if v2 else
           transformers.SwinForImageClassification)
  cfg = Config(image_size=224, patch_size=4, window_size=4, embed_dim=16, depths=[2, 2, 2],
               num_heads=[1, 2, 2], num_labels=5, drop_path_rate=0.0)
  ref = randomize(Model(cfg), wide=lambda n: ("relative_position_bias_table" in n or
                                               "continuous_position_bias" in n or
                                               n.startswith("classifier")))
  _check(torch, "swin", ref, cfg, size, label="swin v2" if v2 else "swin v1")


PVT_V2 = dict(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], num_attention_heads=[1, 2, 3, 4],
              mlp_ratios=[2, 2, 2, 2])


@pytest.mark.parametrize("size", SIZES)
def test_pvt_v2(torch, transformers, size):
  """Overlapping strided convs floor: 97 -> 25, 13, 7, 4; the spatial-reduction
  convs (8, 4, 2) floor too (25 -> 3, 13 -> 3, 7 -> 3)."""
  cfg = transformers.PvtV2Config(num_labels=5, **PVT_V2)
  ref = randomize(transformers.PvtV2ForImageClassification(cfg), wide=("classifier",))
  _check(torch, "pvt_v2", ref, cfg, size)


@pytest.mark.parametrize("size", SIZES)
def test_segformer(torch, transformers, size):
  """The logit map at stride 4 (25x33 for 97x131): every stage map is
  upsampled to stage 0's floored size, as HF's decode head does."""
  cfg = transformers.SegformerConfig(num_labels=5, decoder_hidden_size=16, **PVT_V2)
  ref = randomize(transformers.SegformerForSemanticSegmentation(cfg), wide=("classifier",),
                  bn_mean_std=0.1)
  with torch.no_grad():
    ref.decode_head.classifier.weight.normal_(0.0, 0.5)
  _check(torch, "segformer", ref, cfg.to_dict(), size, nhwc_out=True)


@pytest.mark.parametrize("size", SIZES)
def test_convnext(torch, transformers, size):
  cfg = transformers.ConvNextConfig(num_stages=3, hidden_sizes=[8, 16, 24], depths=[1, 1, 1],
                                    num_labels=5)
  ref = randomize(transformers.ConvNextForImageClassification(cfg), wide=("classifier",),
                  norm_suffix="LayerNorm")
  _check(torch, "convnext", ref, cfg, size)


@pytest.mark.parametrize("size", SIZES)
def test_resnet(torch, transformers, size):
  cfg = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 24], depths=[1, 1, 1],
                                  layer_type="basic", num_labels=5)
  ref = randomize(transformers.ResNetForImageClassification(cfg), wide=("classifier",),
                  norms=("BatchNorm2d",), bn_mean_std=0.1)
  _check(torch, "resnet", ref, cfg, size)


@pytest.mark.parametrize("size", SIZES)
def test_vit_interpolates_the_position_embedding(torch, transformers, size):
  """Stored for a 4x4 grid (32 px, patch 8); 97x131 gives a floored 12x16
  grid, the embedding resampled as HF's `interpolate_pos_encoding=True`
  (PyTorch bicubic, a = -0.75, align_corners=False, from the stored grid)."""
  cfg = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=64, image_size=32, patch_size=8, num_labels=5)
  ref = randomize(transformers.ViTForImageClassification(cfg), wide=("classifier",
                                                                      "vit.embeddings"))
  _check(torch, "vit", ref, cfg, size, posemb_interpolate=True,
         call=lambda m, x: m(pixel_values=x, interpolate_pos_encoding=True).logits)


def test_vit_without_interpolation_says_how():
  m = create_model("vit_tiny_patch16_224", depth=1, num_classes=3)
  v = jax.eval_shape(m.init, jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))
  with pytest.raises(UserError, match="posemb_interpolate=True"):
    jax.eval_shape(m.apply, v, jnp.zeros((1, 100, 150, 3)))


@pytest.mark.parametrize("size", SIZES)
def test_pvt_v1_interpolates_per_stage(torch, transformers, monkeypatch, size):
  """PVT v1 floors (97x131 -> 24x32, 12x16, 6x8, 3x4) and resamples each
  stage's stored position grid bilinearly. HF's own `interpolate_pos_encoding`
  reshapes the stored embedding straight to the new grid (it fails at any
  size but the configured one), so the reference here is HF's model with
  that one method replaced by the official code's `_get_pos_embed`: torch
  bilinear from the stored square grid."""
  from transformers.models.pvt import modeling_pvt  # pylint: disable=g-import-not-at-top

  def official(self, embeddings, height, width):
    n = embeddings.shape[1]
    side = int(round(n ** 0.5))
    if side * side == height * width and side == height:
      return embeddings
    grid = embeddings.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    grid = torch.nn.functional.interpolate(grid, size=(height, width), mode="bilinear")
    return grid.reshape(1, -1, height * width).permute(0, 2, 1)
  monkeypatch.setattr(modeling_pvt.PvtPatchEmbeddings, "interpolate_pos_encoding", official)
  cfg = transformers.PvtConfig(num_labels=5, image_size=64, **PVT_V2)
  ref = randomize(transformers.PvtForImageClassification(cfg),
                  wide=lambda n: n.startswith("classifier") or "position_embeddings" in n)
  _check(torch, "pvt", ref, cfg, size)


def test_pvt_refuses_maps_smaller_than_the_reduction():
  """Where HF's reduction conv has no output (a map below sr_ratio), a clear message."""
  m = create_model("pvt_v2_b0", depths=(1, 1, 1, 1), num_classes=3)
  with pytest.raises(UserError, match=r"stage 0 a map side of 1, smaller than its "
                                      r"spatial-reduction ratio 8.*input side >= 29"):
    jax.eval_shape(m.init, jax.random.PRNGKey(0), jnp.zeros((1, 100, 3, 3)))


@pytest.mark.parametrize("size", [(97, 131), (41, 23)])
def test_dinat_pads_small_maps(torch, transformers, monkeypatch, size):
  """Kernel 3, dilations (1, 3) / (1, 2): 97x131 -> 25x33 and 13x17; 41x23
  -> 11x6 (level 0, dilation 3: padded to 11x9) and 6x3 (dilation 2:
  padded to 6x6; dilation 1: 6x3). HF DiNAT with natten's old kernels
  supplied in torch (tests/test_nat.py)."""
  from test_nat import dinat_with_torch_kernels  # pylint: disable=g-import-not-at-top
  modeling_dinat = dinat_with_torch_kernels(torch, monkeypatch)
  cfg = transformers.DinatConfig(num_labels=5, embed_dim=16, depths=[2, 2], num_heads=[1, 2],
                                 kernel_size=3, dilations=[[1, 3], [1, 2]], mlp_ratio=2.0,
                                 layer_scale_init_value=0.5)
  ref = randomize(modeling_dinat.DinatForImageClassification(cfg), wide=("classifier",))
  _check(torch, "nat", ref, cfg, size)


@pytest.mark.parametrize("size", SIZES)
def test_cvt(torch, transformers, size):
  """Conv embeddings and the strided key / value projections floor:
  97x131 -> 25x33, 13x17, 7x9."""
  cfg = transformers.CvtConfig(num_labels=5, embed_dim=[8, 16, 24], num_heads=[1, 2, 3],
                               depth=[1, 2, 3], mlp_ratio=[2.0, 2.0, 2.0])
  ref = randomize(transformers.CvtForImageClassification(cfg), wide=("classifier",),
                  bn_mean_std=0.1)
  _check(torch, "cvt", ref, cfg, size)


# MobileViT: LayerNorm / GroupNorm scales ~ 1 + N(0, 0.1), matrices ~ N(0, 1 / fan_in)
# (deep BN stacks stay O(1)), BN running means ~ N(0, 0.2).
MOBILEVIT_STYLE = dict(norms=("BatchNorm2d", "LayerNorm", "GroupNorm"), fan_in=True, std=0.1,
                       bn_mean_std=0.2)


@pytest.mark.parametrize("size", SIZES)
def test_mobilevit_resizes_to_whole_patches(torch, transformers, size):
  """97x131 -> block maps 13x17, 7x9, 4x5: resized up to 14x18, 8x10, 4x6
  (torch bilinear) for the 2x2 unfolding and back after the folding."""
  cfg = transformers.MobileViTConfig(
      hidden_sizes=[16, 24, 32], neck_hidden_sizes=[8, 8, 16, 16, 24, 24, 48],
      num_attention_heads=2, expand_ratio=2.0, num_labels=5)
  ref = randomize(transformers.MobileViTForImageClassification(cfg), **MOBILEVIT_STYLE)
  _check(torch, "mobilevit", ref, cfg, size)


@pytest.mark.parametrize("size", SIZES)
def test_mobilevitv2_unfolds_whole_patches(torch, transformers, size):
  """v2 unfolds the whole 2x2 patches only; the remainder row / column is
  zero after folding (torch's unfold / fold), then the 1x1 projection."""
  cfg = transformers.MobileViTV2Config(width_multiplier=0.25, n_attn_blocks=[1, 2, 1],
                                       num_labels=5)
  ref = randomize(transformers.MobileViTV2ForImageClassification(cfg), **MOBILEVIT_STYLE)
  _check(torch, "mobilevitv2", ref, cfg, size)


@pytest.mark.parametrize("size", SIZES)
def test_efficientnet(torch, transformers, size):
  """B0's table at a quarter width: HF's fixed zero padding before each
  stride-2 depthwise conv, then floors (97 -> 49, 25, 13, 7, 4)."""
  cfg = transformers.EfficientNetConfig(width_coefficient=0.25, depth_coefficient=0.3,
                                        hidden_dim=320, num_labels=5)
  ref = randomize(transformers.EfficientNetForImageClassification(cfg),
                  **dict(MOBILEVIT_STYLE, norms=("BatchNorm2d",)))
  _check(torch, "efficientnet", ref, cfg, size)


def test_references_that_refuse_are_refused_clearly():
  """Focal Transformer's and CrossViT's reference code (official / timm)
  assert the configured input size; vitjax refuses with how to fix it."""
  focal = create_model("focal_tiny_srf", depths=(1, 1, 1, 1), num_classes=3)
  with pytest.raises(UserError, match="Focal.*Nearest valid sizes"):
    jax.eval_shape(focal.init, jax.random.PRNGKey(0), jnp.zeros((1, 100, 150, 3)))
  crossvit = create_model("crossvit_tiny_240", num_classes=3)
  with pytest.raises(UserError, match="CrossViT was built for 240x240"):
    jax.eval_shape(crossvit.init, jax.random.PRNGKey(0), jnp.zeros((1, 100, 150, 3)))


def test_simple_feature_pyramid_strides_and_ops():
  """ViTDet's pyramid on a stride-16 7x9 map: x4 / x2 deconvolutions, identity,
  max-pool (floors 7 -> 3) and the top max-pool (kernel 1, stride 2: 3 -> 2);
  the identity level is exactly 1x1 conv + LN, 3x3 conv + LN of the input."""
  from vitjax.models.layers import SimpleFeaturePyramid  # pylint: disable=g-import-not-at-top
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 7, 9, 16))
  m = SimpleFeaturePyramid(8, scale_factors=(4.0, 2.0, 1.0, 0.5))
  v = m.init(jax.random.PRNGKey(1), x)
  outs = m.apply(v, x)
  assert [o.shape[1:] for o in outs] == [(28, 36, 8), (14, 18, 8), (7, 9, 8), (3, 4, 8),
                                         (2, 2, 8)]
  p = v["params"]
  assert p["level_0_up_1"]["kernel"].shape == (2, 2, 8, 4)  # C -> C/2 -> C/4
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  ln = lambda y, q: nn.LayerNorm(epsilon=1e-6).apply({"params": q}, y)  # noqa: E731
  y = ln(jnp.einsum("bhwc,cd->bhwd", x, p["level_2_lateral"]["kernel"][0, 0]),
         p["level_2_lateral_norm"])
  y = ln(jax.lax.conv_general_dilated(y, p["level_2_output"]["kernel"], (1, 1), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC")),
         p["level_2_output_norm"])
  np.testing.assert_allclose(outs[2], y, atol=1e-5)
  np.testing.assert_array_equal(outs[4], outs[3][:, ::2, ::2])


def test_figures():
  """The parity figures of this run (pytest -s prints them)."""
  for (label, size), diff in sorted(FIGURES.items()):
    print(f"{label:14s} {size[0]}x{size[1]}: {diff:.1e}")
