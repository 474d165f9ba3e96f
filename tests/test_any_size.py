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


def _check(torch, family, ref, cfg, size, *, call=None, nhwc_out=False, **model_kw):
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
  FIGURES[(family, size)] = diff
  print(f"\n{family} {size[0]}x{size[1]}: max |diff| {diff:.2e} (|ref| max "
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
  _check(torch, "swin", ref, cfg, size)


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
