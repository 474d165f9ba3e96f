"""MaskFormer: outputs, bad configs, sizes and HF weight parity.

The HF `MaskFormerForInstanceSegmentation` reference is built from a tiny
config (a 4-stage Swin backbone, window 2, every stage map larger than the
window; `use_pretrained_backbone=False`) with every parameter re-drawn
(LayerNorm and GroupNorm scales ~ 1 + N(0, 0.1), the rest ~ N(0, 0.1));
fp32 class logits and mask logits must agree to 1e-4.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vitjax.convert.maskformer import hf_maskformer_to_vitjax
from vitjax.errors import UserError
from vitjax.models import create_model
from oracle import n_params, randomize

TOL = 1e-4


# Paper Table 1 (ADE20K, 150 classes): Swin-T 42M, ResNet-50 41M
# (vitjax: 41,758,545 / 41,307,863).
PUBLISHED = {"maskformer_swin_tiny": 42e6, "maskformer_resnet50": 41e6}

# How `randomize` re-draws the reference: LayerNorm / GroupNorm scales ~ 1 + N(0, 0.1),
# everything else ~ N(0, 0.1).
STYLE = dict(norms=("LayerNorm", "GroupNorm"), std=0.1)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_param_counts_match_paper(name):
  m = create_model(name, num_classes=150)
  shapes = jax.eval_shape(lambda x: m.init(jax.random.PRNGKey(0), x),
                          jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))
  got = n_params(shapes["params"])
  assert abs(got - PUBLISHED[name]) / PUBLISHED[name] < 0.01, (name, got)


# A 2-stage ResNet backbone: cheap to compile.
SMALL = dict(backbone="resnet18", stage_norms=False,
             backbone_kwargs=dict(stage_depths=(1, 1), width=8, small_stem=False))


@pytest.mark.slow
def test_outputs_and_dropout():
  m = create_model("maskformer_tiny", num_classes=3, dropout=0.5, **SMALL)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 64, 64, 3))
  v = m.init(jax.random.PRNGKey(1), x)
  run = jax.jit(lambda v, r: m.apply(v, x, train=True, rngs={"dropout": r},
                                     mutable=["batch_stats"])[0])
  (logits, out), (l2, _) = run(v, jax.random.PRNGKey(0)), run(v, jax.random.PRNGKey(1))
  assert logits.shape == (2, 16, 4)  # N = 16 queries, C + 1 classes
  assert out["masks"].shape == (2, 16, 16, 16)  # 1/4 of the input
  assert len(out["aux"]) == 1 and out["aux"][0]["masks"].shape == (2, 16, 16, 16)
  assert out["pixel_embeddings"].shape == (2, 16, 16, 64)
  assert out["stage_1"].shape == (2, 8, 8, 16)
  assert not np.allclose(logits, l2)  # decoder dropout active in training


def test_bad_config_refused():
  with pytest.raises(UserError, match="multiple of 32"):
    create_model("maskformer_tiny", fpn_dim=48)
  with pytest.raises(UserError, match="divisible by num_heads"):
    create_model("maskformer_tiny", hidden_dim=66)


@pytest.mark.slow
def test_hf_parity(torch, transformers):
  bc = transformers.SwinConfig(embed_dim=16, depths=[1, 2, 1, 1], num_heads=[1, 2, 2, 4],
                               window_size=2, image_size=64,
                               out_features=["stage1", "stage2", "stage3", "stage4"])
  cfg = transformers.MaskFormerConfig(
      backbone_config=bc, use_pretrained_backbone=False, num_labels=5, fpn_feature_size=32,
      mask_feature_size=32, decoder_config=dict(
          model_type="detr", d_model=32, decoder_layers=2, decoder_attention_heads=4,
          decoder_ffn_dim=64, num_queries=6))
  ref = randomize(transformers.MaskFormerForInstanceSegmentation(cfg), **STYLE)
  x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))
  with torch.no_grad():
    want = ref(pixel_values=x)
  sd = {k: v.numpy() for k, v in ref.state_dict().items()}
  cv = hf_maskformer_to_vitjax(sd, cfg)
  params, kw = cv.params, cv.model_kwargs
  assert kw["num_classes"] == 5 and kw["num_heads"] == 4 and kw["num_queries"] == 6
  m = create_model("maskformer_swin_tiny", **kw)
  logits, out = jax.jit(lambda p, x: m.apply({"params": p}, x))(
      params, jnp.asarray(x.numpy().transpose(0, 2, 3, 1)))
  d_cls = np.abs(np.asarray(logits) - want.class_queries_logits.numpy()).max()
  d_mask = np.abs(np.asarray(out["masks"]) - want.masks_queries_logits.numpy()).max()
  print(f"maskformer parity: class logits {d_cls:.2e}, mask logits {d_mask:.2e}")
  assert d_cls <= TOL and d_mask <= TOL, (d_cls, d_mask)


def test_converter_refuses_non_maskformer():
  with pytest.raises(UserError, match="Not a HF MaskFormer"):
    hf_maskformer_to_vitjax({"a.weight": np.zeros(3, np.float32)})
