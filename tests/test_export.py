"""vitjax -> Hugging Face snapshot -> `from_pretrained`: the same logits.

For every family with an exporter, a small randomly initialised HF model is
imported with its registered converter, written back with `export_hf`, and
loaded with transformers' Auto class: no tensor may be missing or unexpected,
every tensor must equal the original's, and the loaded model's logits must
equal vitjax's within 1e-4 (fp32). A vitjax-native model (random init, no HF
origin) makes the same trip.
"""

import json

import jax
import numpy as np
import pytest

from vitjax.convert import convert_checkpoint, export_hf, get_exporter, list_exporters
from vitjax.errors import UserError
from vitjax.models import create_model
from oracle import randomize

TOL = 1e-4
SEGMENTATION = "AutoModelForSemanticSegmentation"
CLASSIFICATION = "AutoModelForImageClassification"


def _vit(t):
  cfg = t.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=64, image_size=32, patch_size=8, num_labels=5)
  return "vit", t.ViTForImageClassification(cfg), 32


def _deit(t):
  cfg = t.DeiTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=48, image_size=32, patch_size=8, num_labels=5)
  return "vit", t.DeiTForImageClassificationWithTeacher(cfg), 32


def _swin(t):
  cfg = t.SwinConfig(image_size=32, patch_size=2, window_size=4, depths=[2, 2], embed_dim=16,
                     num_heads=[2, 2], num_labels=5)
  return "swin", t.SwinForImageClassification(cfg), 32


def _swinv2(t):
  cfg = t.Swinv2Config(image_size=32, patch_size=2, window_size=4, depths=[2, 2], embed_dim=16,
                       num_heads=[2, 4], pretrained_window_sizes=[0, 2], num_labels=5)
  return "swin", t.Swinv2ForImageClassification(cfg), 32


def _convnext(t):
  cfg = t.ConvNextConfig(num_stages=2, hidden_sizes=[8, 16], depths=[1, 2], num_labels=6)
  return "convnext", t.ConvNextForImageClassification(cfg), 32


def _resnet_basic(t):
  cfg = t.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 2],
                       layer_type="basic", num_labels=5)
  return "resnet", t.ResNetForImageClassification(cfg), 32


def _resnet_bottleneck(t):
  cfg = t.ResNetConfig(embedding_size=8, hidden_sizes=[16, 32], depths=[2, 1],
                       layer_type="bottleneck", num_labels=5)
  return "resnet", t.ResNetForImageClassification(cfg), 32


def _segformer(t):
  cfg = t.SegformerConfig(num_encoder_blocks=2, hidden_sizes=[8, 16], depths=[1, 1],
                          num_attention_heads=[1, 2], sr_ratios=[2, 1], patch_sizes=[7, 3],
                          strides=[4, 2], decoder_hidden_size=8, num_labels=3)
  return "segformer", t.SegformerForSemanticSegmentation(cfg), 32


CASES = {"vit": _vit, "deit": _deit, "swin": _swin, "swinv2": _swinv2, "convnext": _convnext,
         "resnet_basic": _resnet_basic, "resnet_bottleneck": _resnet_bottleneck,
         "segformer": _segformer}


def _images(torch, size, n=2):
  return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(3))


def _vitjax_logits(model, variables, x):
  logits, _ = jax.jit(lambda v, x: model.apply(v, x, train=False))(
      variables, np.transpose(x.numpy(), (0, 2, 3, 1)))
  return np.asarray(logits)


def _reload(transformers, out, auto):
  loaded, info = getattr(transformers, auto).from_pretrained(out, output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  assert not info.get("mismatched_keys"), info
  return loaded.eval()


def _hf_logits(torch, hf, x):
  with torch.no_grad():
    y = hf(pixel_values=x).logits.numpy()
  return y if y.ndim == 2 else np.transpose(y, (0, 2, 3, 1))  # segmentation maps: NHWC


def test_every_family_of_the_issue_has_an_exporter():
  assert {"vit", "swin", "convnext", "resnet", "segformer"} <= {
      e.family for e in list_exporters()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_round_trip_through_from_pretrained(case, torch, transformers, tmp_path):
  family, ref, size = CASES[case](transformers)
  randomize(ref, norms=("LayerNorm", "BatchNorm2d"), bn_mean_std=0.2, bn_count=7)
  sd = {k: v for k, v in ref.state_dict().items()}
  cv = convert_checkpoint(sd, family, "hf", config=ref.config)
  model = cv.create_model()
  assert get_exporter(model).family == family
  out = export_hf(cv, str(tmp_path / case))
  config = json.loads((tmp_path / case / "config.json").read_text())
  assert config["model_type"] == ref.config.model_type
  assert config["architectures"] == [type(ref).__name__]
  loaded = _reload(transformers, out, SEGMENTATION if family == "segformer" else CLASSIFICATION)
  assert type(loaded) is type(ref)
  # Every tensor back where it came from (BatchNorm running statistics included).
  back = loaded.state_dict()
  for k, v in sd.items():
    if k.endswith("num_batches_tracked"):
      continue
    np.testing.assert_array_equal(back[k].numpy(), v.numpy(), err_msg=k)
  x = _images(torch, size)
  want = _vitjax_logits(model, cv.variables, x)
  got = _hf_logits(torch, loaded, x)
  assert np.std(want) > 1e-3
  np.testing.assert_allclose(got, want, atol=TOL, rtol=0)


def test_a_vitjax_native_model_round_trips(torch, transformers, tmp_path):
  """A ViT initialised by vitjax (its own epsilon, zero-init head re-drawn) goes to HF."""
  from vitjax.convert import Converted  # pylint: disable=g-import-not-at-top
  kw = dict(num_classes=4, patch_size=4, hidden_size=24, depth=2, num_heads=3, mlp_dim=32)
  model = create_model("vit_tiny_patch16_224", **kw)
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), np.zeros((1, 16, 16, 3), np.float32))
  variables = jax.tree.map(lambda a: a + 0.02 * jax.random.normal(jax.random.PRNGKey(1), a.shape),
                           variables)
  cv = Converted(variables=variables, model_name="vit_tiny_patch16_224", model_kwargs=kw)
  out = export_hf(cv, str(tmp_path / "vit"))
  loaded = _reload(transformers, out, CLASSIFICATION)
  x = _images(torch, 16)
  np.testing.assert_allclose(_hf_logits(torch, loaded, x), _vitjax_logits(model, variables, x),
                             atol=TOL, rtol=0)


def test_models_hf_cannot_hold_are_refused(tmp_path):
  cvt = create_model("cvt_13", num_classes=3)
  with pytest.raises(UserError, match=r"No Hugging Face exporter for ConvolutionalVisionTransformer.*swin"):
    get_exporter(cvt)
  small = create_model("resnet18", num_classes=3, small_stem=True)
  variables = jax.eval_shape(small.init, jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3)))
  with pytest.raises(UserError, match="small_stem"):
    get_exporter(small)(small, variables, 32)
  gap = create_model("vit_tiny_patch16_224", num_classes=3, pool="gap", depth=1)
  variables = jax.eval_shape(gap.init, jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3)))
  with pytest.raises(UserError, match="class token"):
    get_exporter(gap)(gap, variables, 32)
