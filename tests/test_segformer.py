"""SegFormer: sizes, outputs, bad configs and HF weight parity.

HF `SegformerForSemanticSegmentation` references are built from two tiny
configs with every parameter re-drawn (LayerNorms, the decoder's BatchNorm
affine and running statistics included); fp32 logits (1/4 resolution) must
agree to 1e-4. The torch tests skip without torch / transformers.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from oracle import max_abs_diff, n_params, randomize
from vitjax.convert.segformer import hf_segformer_to_vitjax
from vitjax.errors import UserError
from vitjax.models import create_model
from vitjax.models.segformer import SegFormer

TOL = 1e-4

# Paper Table 2 (ADE20K, 150 classes), millions. B0's 3.8 is rounded from
# 3.75 (encoder 3.3 + decoder 0.4 in Table 1), hence the wider margin there.
PUBLISHED = {"segformer_b0": 3.8, "segformer_b1": 13.7, "segformer_b2": 27.5,
             "segformer_b3": 47.3, "segformer_b4": 64.1, "segformer_b5": 84.7}
EXACT = {"segformer_b0": 3_752_694, "segformer_b1": 13_715_798}

# How `randomize` re-draws the references: LayerNorm scales ~ 1 + N(0, 0.1), the
# head ~ N(0, 0.5), everything else (biases, convs, BatchNorm affine) ~ N(0, 0.05);
# BatchNorm running means ~ N(0, 0.1), running variances ~ U(0.5, 1.5).
STYLE = dict(wide=("classifier",), bn_mean_std=0.1)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_param_counts_match_paper(name):
  m = create_model(name, num_classes=150)
  shapes = jax.eval_shape(lambda x: m.init(jax.random.PRNGKey(0), x),
                          jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32))
  got = n_params(shapes["params"])
  want = PUBLISHED[name] * 1e6
  assert abs(got - want) / want < (0.015 if name == "segformer_b0" else 0.01), (name, got)
  if name in EXACT:
    assert got == EXACT[name]


TINY = dict(embed_dims=(8, 16), depths=(1, 2), num_heads=(1, 2), mlp_ratios=(2, 2),
            sr_ratios=(2, 1), patch_sizes=(7, 3), strides=(4, 2), decoder_dim=12,
            num_classes=3)


@pytest.mark.slow
def test_outputs_batch_stats_and_dropout():
  m = SegFormer(**TINY, drop_path_rate=0.2, dropout=0.5)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 32, 32, 3))

  v = jax.jit(m.init)(jax.random.PRNGKey(1), x)
  train = jax.jit(lambda v, r: m.apply(v, x, train=True, rngs={"dropout": r},
                                       mutable=["batch_stats"]))
  (logits, out), new = train(v, jax.random.PRNGKey(0))  # one compilation for both calls
  (t1, _), _ = train(v, jax.random.PRNGKey(1))
  t0 = logits
  assert logits.shape == (2, 8, 8, 3)  # 1/4 of the input
  assert out["stage_0"].shape == (2, 8, 8, 8) and out["stage_1"].shape == (2, 4, 4, 16)
  assert out["encoded"].shape == (2, 4, 4, 16) and out["pre_logits"].shape == (2, 8, 8, 12)
  assert not np.allclose(t0, t1)  # dropout / drop path active in training
  assert not np.allclose(new["batch_stats"]["decode_fuse"]["bn"]["mean"],
                         v["batch_stats"]["decode_fuse"]["bn"]["mean"])


def test_bad_config_and_input():
  x = jnp.zeros((1, 32, 32, 3))
  with pytest.raises(UserError, match="num_classes"):
    SegFormer(**dict(TINY, num_classes=0)).init(jax.random.PRNGKey(0), x)
  with pytest.raises(UserError, match="smaller than its spatial-reduction ratio"):
    SegFormer(**TINY).init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 30, 3)))


def _parity(torch, transformers, image, **cfg_kw):
  cfg = transformers.SegformerConfig(num_labels=5, **cfg_kw)
  ref = randomize(transformers.SegformerForSemanticSegmentation(cfg), **STYLE)
  with torch.no_grad():
    ref.decode_head.classifier.weight.normal_(0.0, 0.5)
  x = torch.randn(2, 3, image, image, generator=torch.Generator().manual_seed(1))
  with torch.no_grad():
    want = ref(pixel_values=x).logits.numpy().transpose(0, 2, 3, 1)
  cv = hf_segformer_to_vitjax(ref.state_dict(), cfg.to_dict())
  params, stats, kw = cv.params, cv.variables["batch_stats"], cv.model_kwargs
  got, _ = jax.jit(SegFormer(**kw).apply)({"params": params, "batch_stats": stats},
                                          jnp.asarray(x.numpy().transpose(0, 2, 3, 1)))
  assert got.shape == want.shape == (2, image // 4, image // 4, 5)
  assert np.abs(want).max() > 0.1  # not a trivially small output
  diff = max_abs_diff(want, got)
  assert diff <= TOL, diff
  return diff, kw


def test_hf_segformer_parity_four_stages(torch, transformers):
  _, kw = _parity(torch, transformers, 64, hidden_sizes=[8, 16, 24, 32], depths=[1, 2, 1, 1],
                  num_attention_heads=[1, 2, 3, 4], mlp_ratios=[4, 4, 4, 4],
                  decoder_hidden_size=16)
  assert kw["sr_ratios"] == (8, 4, 2, 1) and kw["decoder_dim"] == 16


def test_hf_segformer_parity_two_stages(torch, transformers):
  _parity(torch, transformers, 32, num_encoder_blocks=2, hidden_sizes=[8, 16], depths=[2, 1],
          num_attention_heads=[2, 2], mlp_ratios=[2, 3], sr_ratios=[2, 1], patch_sizes=[7, 3],
          strides=[4, 2], decoder_hidden_size=8)


def test_hub_names_and_bad_state_dicts(torch, transformers):
  cfg = transformers.SegformerConfig(num_encoder_blocks=2, hidden_sizes=[8, 16], depths=[1, 1],
                                     num_attention_heads=[1, 2], sr_ratios=[2, 1],
                                     patch_sizes=[7, 3], strides=[4, 2], decoder_hidden_size=8,
                                     num_labels=3)
  sd = {k: v.numpy() for k, v in transformers.SegformerForSemanticSegmentation(cfg)
        .state_dict().items()}
  modern = hf_segformer_to_vitjax(sd, cfg.to_dict()).params
  # The names the Hub checkpoints use (transformers 4.x) convert to the same params.
  old = {}
  for k, v in sd.items():
    k = k.replace("segformer.stages.0.patch_embeddings", "segformer.encoder.patch_embeddings.0")
    k = k.replace("segformer.stages.1.patch_embeddings", "segformer.encoder.patch_embeddings.1")
    k = k.replace("segformer.stages.0.blocks.", "segformer.encoder.block.0.")
    k = k.replace("segformer.stages.1.blocks.", "segformer.encoder.block.1.")
    k = k.replace("segformer.stages.0.layer_norm", "segformer.encoder.layer_norm.0")
    k = k.replace("segformer.stages.1.layer_norm", "segformer.encoder.layer_norm.1")
    for a, b in (("attention.q_proj", "attention.self.query"),
                 ("attention.k_proj", "attention.self.key"),
                 ("attention.v_proj", "attention.self.value"),
                 ("attention.sequence_reduction.sequence_reduction", "attention.self.sr"),
                 ("attention.sequence_reduction.layer_norm", "attention.self.layer_norm"),
                 ("attention.o_proj", "attention.output.dense"), ("mlp.fc1", "mlp.dense1"),
                 ("mlp.fc2", "mlp.dense2"), ("layernorm_before", "layer_norm_1"),
                 ("layernorm_after", "layer_norm_2"), ("linear_projections", "linear_c")):
      k = k.replace(a, b)
    old[k] = v
  legacy = hf_segformer_to_vitjax(old, cfg.to_dict()).params
  jax.tree.map(np.testing.assert_array_equal, modern, legacy)
  with pytest.raises(UserError, match="Not a HF SegFormer"):
    hf_segformer_to_vitjax({"foo.weight": np.zeros((2, 2))})
  with pytest.raises(UserError, match="decode_head"):
    hf_segformer_to_vitjax({k: v for k, v in sd.items() if not k.startswith("decode_head")})
  with pytest.raises(UserError, match="decoder_dim"):
    hf_segformer_to_vitjax(sd, decoder_dim=32)
