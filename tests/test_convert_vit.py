"""Weight import of ViT / DeiT: parity with Hugging Face transformers and timm.

Reference models are built offline from configs with random weights (every
parameter re-drawn, LayerNorms and position embeddings included), written to
.safetensors, converted, and run on the same input as vitjax; fp32 logits
must agree to 1e-4. timm is imported with a stand-in torchvision
(tests/torchvision_stub.py). The torch tests skip when torch / transformers /
timm are not installed.
"""

import functools
import pickle

import jax
import numpy as np
import pytest

from vitjax.convert import (check_params, hf_vit_config, hf_vit_to_vitjax,
                            load_pretrained, load_state_dict, native_image_size,
                            timm_vit_to_vitjax, vitjax_to_hf_vit,
                            vitjax_to_timm_vit)
from vitjax.convert.common import flatten_params
from vitjax.errors import UserError
from vitjax.models.vit import VisionTransformer
from oracle import assert_close, randomize

try:
  from torchvision_stub import import_timm
except ImportError:  # tests/ imported as a package
  from tests.torchvision_stub import import_timm

TOL = 1e-4


@pytest.fixture(scope="module")
def timm(transformers):  # transformers first: it must not see the stand-in
  del transformers
  return import_timm()


def save(torch, model, path):
  import safetensors.torch  # pylint: disable=g-import-not-at-top
  del torch
  safetensors.torch.save_file(
      {k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
  return str(path)


def images(torch, h, w, seed=1):
  x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(seed))
  return x, np.transpose(x.numpy(), (0, 2, 3, 1))  # NCHW, NHWC


def run_vitjax(params, kwargs, x_nhwc):
  model = VisionTransformer(**kwargs)
  logits, out = jax.jit(lambda p, x: model.apply({"params": p}, x))(params, x_nhwc)
  return np.asarray(logits), jax.tree_util.tree_map(np.asarray, out)


def assert_trees_equal(a, b):
  fa, fb = flatten_params(a), flatten_params(b)
  assert sorted(fa) == sorted(fb)
  for k in fa:
    np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=k)


# ---------------------------------------------------------------------------
# Hugging Face transformers.

def test_hf_vit_tiny_parity(torch, transformers, tmp_path):
  """ViT-Ti/16 (192 wide, 3 heads, MLP 768), depth 4, a 48x64 input (3x4
  patches: a non-square grid checks the patch order)."""
  cfg = transformers.ViTConfig(
      hidden_size=192, num_hidden_layers=4, num_attention_heads=3,
      intermediate_size=768, image_size=(48, 64), patch_size=16, num_labels=10)
  ref = randomize(transformers.ViTForImageClassification(cfg))
  path = save(torch, ref, tmp_path / "model.safetensors")
  params, kw = load_pretrained(path, "hf", config=cfg.to_dict(), validate=False)
  assert kw["num_heads"] == 3 and kw["layer_norm_eps"] == 1e-12
  assert (kw["hidden_size"], kw["mlp_dim"], kw["depth"], kw["num_classes"]) == (192, 768, 4, 10)
  check_params(params, kw, image_size=(48, 64))
  x, x_nhwc = images(torch, 48, 64)
  with torch.no_grad():
    want = ref(pixel_values=x).logits.numpy()
  got, _ = run_vitjax(params, kw, x_nhwc)
  assert_close("hf ViT-Ti/16", want, got, TOL)


def test_hf_snapshot_folder_and_pooler(torch, transformers, tmp_path):
  """A bare ViTModel saved with save_pretrained (folder with config.json and
  model.safetensors): the pooler becomes the pre-logits layer."""
  cfg = transformers.ViTConfig(
      hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
      intermediate_size=128, image_size=32, patch_size=8, layer_norm_eps=1e-6)
  ref = randomize(transformers.ViTModel(cfg))
  ref.save_pretrained(tmp_path / "snap", safe_serialization=True)
  params, kw = load_pretrained(str(tmp_path / "snap"), "hf")
  assert kw["num_classes"] == 0 and kw["representation_size"] == 64
  assert kw["num_heads"] == 4 and kw["layer_norm_eps"] == 1e-6
  assert native_image_size(params, kw) == 32
  x, x_nhwc = images(torch, 32, 32)
  with torch.no_grad():
    want = ref(pixel_values=x).pooler_output.numpy()
  got, _ = run_vitjax(params, kw, x_nhwc)
  assert_close("hf ViTModel pooler", want, got, TOL)
  # Fine-tuning: drop the pooler, ask for a new head.
  params2, kw2 = load_pretrained(str(tmp_path / "snap"), "hf",
                                 representation_size=None, num_classes=7)
  assert "pre_logits" not in params2 and "head" not in params2
  assert kw2["num_classes"] == 7 and not kw2["representation_size"]


def test_hf_deit_tiny_distilled_parity(torch, transformers, tmp_path):
  """DeiT-Ti distilled (DeiTForImageClassificationWithTeacher), depth 4."""
  cfg = transformers.DeiTConfig(
      hidden_size=192, num_hidden_layers=4, num_attention_heads=3,
      intermediate_size=768, image_size=64, patch_size=16, num_labels=10)
  ref = randomize(transformers.DeiTForImageClassificationWithTeacher(cfg))
  path = save(torch, ref, tmp_path / "deit.safetensors")
  params, kw = load_pretrained(path, "hf", config=cfg)
  assert kw["distilled"] and kw["num_heads"] == 3
  assert params["pos_embedding"].shape == (1, 2 + 16, 192)
  x, x_nhwc = images(torch, 64, 64)
  with torch.no_grad():
    r = ref(pixel_values=x)
  got, out = run_vitjax(params, kw, x_nhwc)
  assert_close("hf DeiT-Ti distilled", r.logits.numpy(), got, TOL)
  np.testing.assert_allclose(out["logits_cls"], r.cls_logits.numpy(), atol=TOL)
  np.testing.assert_allclose(out["logits_dist"], r.distillation_logits.numpy(), atol=TOL)


def test_hf_deit_single_head_parity(torch, transformers, tmp_path):
  """DeiTForImageClassification: distillation token, one classifier."""
  cfg = transformers.DeiTConfig(
      hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
      intermediate_size=128, image_size=32, patch_size=16, num_labels=5,
      qkv_bias=False)
  ref = randomize(transformers.DeiTForImageClassification(cfg))
  cv = hf_vit_to_vitjax(ref.state_dict(), cfg)
  params, kw = cv.params, cv.model_kwargs  # torch tensors, in memory
  assert kw["distilled"] and not kw["qkv_bias"]
  x, x_nhwc = images(torch, 32, 32)
  with torch.no_grad():
    want = ref(pixel_values=x).logits.numpy()
  got, _ = run_vitjax(params, kw, x_nhwc)
  assert_close("hf DeiT single head", want, got, TOL)


# ---------------------------------------------------------------------------
# timm.

def test_timm_vit_small_gap_parity(torch, timm, tmp_path):
  """ViT-S/32 without class token, global average pooling + fc_norm."""
  ref = randomize(timm.create_model(
      "vit_small_patch32_224", pretrained=False, class_token=False,
      global_pool="avg", img_size=64, num_classes=10))
  path = save(torch, ref, tmp_path / "s32.safetensors")
  params, kw = load_pretrained(path, "timm", num_heads=6)
  assert (kw["pool"], kw["fc_norm"], kw["hidden_size"], kw["depth"]) == ("gap", True, 384, 12)
  assert "cls_token" not in params
  x, x_nhwc = images(torch, 64, 64)
  with torch.no_grad():
    want = ref(x).numpy()
  got, _ = run_vitjax(params, kw, x_nhwc)
  assert_close("timm ViT-S/32 gap", want, got, TOL)


def test_timm_vit_tiny_parity_and_round_trips(torch, transformers, timm, tmp_path):
  """timm ViT-Ti/16 with class token (depth 4); vitjax -> timm -> vitjax and
  vitjax -> HF -> vitjax are exact, and the exports load strictly into timm
  and HF models that compute the same logits."""
  ref = randomize(timm.create_model(
      "vit_tiny_patch16_224", pretrained=False, img_size=32, num_classes=10,
      depth=4))
  path = save(torch, ref, tmp_path / "ti16.safetensors")
  params, kw = load_pretrained(path, "timm", num_heads=3)
  assert kw["pool"] == "cls" and kw["layer_norm_eps"] == 1e-6
  x, x_nhwc = images(torch, 32, 32)
  with torch.no_grad():
    want = ref(x).numpy()
  got, _ = run_vitjax(params, kw, x_nhwc)
  assert_close("timm ViT-Ti/16", want, got, TOL)

  # timm round trip, and a strict load into a fresh timm model.
  sd = vitjax_to_timm_vit(params)
  assert sorted(sd) == sorted(ref.state_dict())
  cv = timm_vit_to_vitjax(sd, num_heads=3)
  params2, kw2 = cv.params, cv.model_kwargs
  assert_trees_equal(params, params2)
  assert kw2 == kw

  # HF round trips (both tensor layouts) and a strict load into HF.
  cfg = hf_vit_config(params, kw)
  for layout in ("legacy", "v5"):
    hf_sd = vitjax_to_hf_vit(params, layout=layout)
    cv = hf_vit_to_vitjax(hf_sd, cfg)
    params3, kw3 = cv.params, cv.model_kwargs
    assert_trees_equal(params, params3)
    assert kw3 == kw
  hf = transformers.ViTForImageClassification(transformers.ViTConfig(**cfg)).eval()
  layout = "v5" if any(k.startswith("vit.layers.") for k in hf.state_dict()) else "legacy"
  hf.load_state_dict({k: torch.from_numpy(v) for k, v in
                      vitjax_to_hf_vit(params, layout=layout).items()}, strict=True)
  with torch.no_grad():
    assert_close("vitjax -> HF export", got, hf(pixel_values=x).logits.numpy(), TOL)


def test_timm_deit_distilled_parity_and_round_trip(torch, timm, tmp_path):
  ref = randomize(timm.create_model(
      "deit_tiny_distilled_patch16_224", pretrained=False, img_size=32,
      num_classes=5, depth=2))
  params, kw = load_pretrained(save(torch, ref, tmp_path / "d.safetensors"),
                               "timm", num_heads=3)
  assert kw["distilled"]
  x, x_nhwc = images(torch, 32, 32)
  with torch.no_grad():
    want = ref(x).numpy()
  got, _ = run_vitjax(params, kw, x_nhwc)
  assert_close("timm DeiT-Ti distilled", want, got, TOL)
  params2 = timm_vit_to_vitjax(vitjax_to_timm_vit(params), num_heads=3).params
  assert_trees_equal(params, params2)


# ---------------------------------------------------------------------------
# Files and bad inputs (no torch needed).

@functools.lru_cache(maxsize=None)
def _tiny_vitjax(items):
  kw = dict(items)
  model = VisionTransformer(**kw)
  params = jax.jit(model.init)(jax.random.PRNGKey(0),
                               np.zeros((1, 16, 16, 3), np.float32))["params"]
  return jax.tree_util.tree_map(np.asarray, params)


def tiny_vitjax(**kw):
  """A small vitjax ViT (random, non-zero head) and its kwargs (cached)."""
  kw = dict(num_classes=4, patch_size=8, hidden_size=32, depth=2, num_heads=2,
            mlp_dim=64, head_zero_init=False, **kw)
  return _tiny_vitjax(tuple(sorted(kw.items()))), kw


def test_pickle_checkpoints_are_refused(tmp_path):
  marker = tmp_path / "unpickled"

  class Evil:
    def __reduce__(self):
      return (open, (str(marker), "w"))

  for name in ("pytorch_model.bin", "model.pth", "model.pt"):
    path = tmp_path / name
    path.write_bytes(pickle.dumps({"x": Evil()}))
    with pytest.raises(UserError, match="safetensors"):
      load_pretrained(str(path), "hf")
  with pytest.raises(UserError, match="pickle"):
    load_state_dict(str(tmp_path))  # a folder with only pickles
  assert not marker.exists()


def test_not_a_vit_state_dict():
  params, _ = tiny_vitjax()
  sd = vitjax_to_hf_vit(params)
  with pytest.raises(UserError, match="patch_embeddings"):
    hf_vit_to_vitjax({"conv1.weight": np.zeros((8, 3, 7, 7))}, num_heads=2)
  # A missing block: the error names the absent tensors.
  broken = {k: v for k, v in sd.items() if ".layer.1.attention." not in k}
  with pytest.raises(UserError, match=r"missing .*"
                     r"vit\.encoder\.layer\.1\.attention\.attention\.query\.weight"):
    hf_vit_to_vitjax(broken, num_heads=2)
  # No blocks at all.
  no_blocks = {k: v for k, v in vitjax_to_timm_vit(params).items() if not k.startswith("blocks.")}
  with pytest.raises(UserError, match="no transformer blocks"):
    timm_vit_to_vitjax(no_blocks, num_heads=2)
  # An unsupported variant (layer scale): the extra tensors are named.
  timm_sd = vitjax_to_timm_vit(params)
  timm_sd["blocks.0.ls1.gamma"] = np.ones(32, np.float32)
  with pytest.raises(UserError, match=r"blocks\.0\.ls1\.gamma"):
    timm_vit_to_vitjax(timm_sd, num_heads=2)
  # num_heads is needed, and the architecture cannot be overridden.
  with pytest.raises(UserError, match="num_heads"):
    timm_vit_to_vitjax(vitjax_to_timm_vit(params))
  with pytest.raises(UserError, match="hidden_size"):
    timm_vit_to_vitjax(vitjax_to_timm_vit(params), num_heads=2, hidden_size=64)
  with pytest.raises(UserError, match="bogus"):
    timm_vit_to_vitjax(vitjax_to_timm_vit(params), num_heads=2, bogus=1)
  with pytest.raises(UserError, match="source"):
    load_pretrained(sd, "keras")


def test_safetensors_reader_and_round_trip_without_torch(tmp_path):
  """The numpy safetensors path (incl. bfloat16, read without torch) and the
  exact round trips on a vitjax-initialised model."""
  safetensors_numpy = pytest.importorskip("safetensors.numpy")
  import ml_dtypes  # pylint: disable=g-import-not-at-top
  params, kw = tiny_vitjax()
  sd = vitjax_to_timm_vit(params)
  safetensors_numpy.save_file(sd, str(tmp_path / "f32.safetensors"))
  params2, kw2 = load_pretrained(str(tmp_path / "f32.safetensors"), "timm",
                                 num_heads=2, head_zero_init=False)
  assert_trees_equal(params, params2)
  assert {k: kw2[k] for k in kw} == kw

  # bfloat16 on disk (numpy's safetensors API cannot read it: raw fallback).
  from vitjax.convert.common import _read_safetensors_raw  # pylint: disable=g-import-not-at-top
  bf = {k: v.astype(ml_dtypes.bfloat16) for k, v in sd.items()}
  raw = {k: v.view(np.uint16) for k, v in bf.items()}
  safetensors_numpy.save_file(raw, str(tmp_path / "u16.safetensors"))
  data = (tmp_path / "u16.safetensors").read_bytes()
  n = int.from_bytes(data[:8], "little")
  header = data[8:8 + n].rstrip().replace(b'"U16"', b'"BF16"')
  header += b" " * (-len(header) % 8)
  (tmp_path / "bf16.safetensors").write_bytes(
      len(header).to_bytes(8, "little") + header + data[8 + n:])
  loaded = load_state_dict(str(tmp_path / "bf16.safetensors"))
  assert loaded["pos_embed"].dtype == ml_dtypes.bfloat16
  for k in sd:
    np.testing.assert_array_equal(loaded[k], bf[k])
  assert sorted(_read_safetensors_raw(str(tmp_path / "bf16.safetensors"))) == sorted(sd)
  params3, _ = load_pretrained(str(tmp_path / "bf16.safetensors"), "timm", num_heads=2)
  assert params3["pos_embedding"].dtype == np.float32

  # vitjax -> HF -> vitjax, and GAP models have no HF form.
  params4 = hf_vit_to_vitjax(vitjax_to_hf_vit(params), hf_vit_config(params, kw)).params
  assert_trees_equal(params, params4)
  gap, gap_kw = tiny_vitjax(pool="gap", fc_norm=True)
  with pytest.raises(UserError, match="global-average"):
    vitjax_to_hf_vit(gap)
  cv = timm_vit_to_vitjax(vitjax_to_timm_vit(gap), num_heads=2)
  gap2, gap_kw2 = cv.params, cv.model_kwargs
  assert_trees_equal(gap, gap2)
  assert gap_kw2["pool"] == "gap" and gap_kw2["fc_norm"]
