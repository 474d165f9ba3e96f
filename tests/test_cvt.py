"""CvT: sizes, outputs, BatchNorm statistics, bad inputs and HF weight parity.

The HF reference is built from a tiny config with every parameter re-drawn
and random BatchNorm running statistics (eval mode); fp32 logits must agree
to 1e-4. The torch tests skip without torch / transformers.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vitjax.convert.cvt import hf_cvt_to_vitjax
from vitjax.errors import UserError
from vitjax.models import create_model
from vitjax.models.cvt import ConvolutionalVisionTransformer
from oracle import max_abs_diff, n_params, randomize

TOL = 1e-4
TINY = dict(embed_dims=(8, 16), depths=(1, 2), num_heads=(1, 2), patch_sizes=(7, 3),
            patch_strides=(4, 2), patch_paddings=(2, 1), mlp_ratio=2.0, num_classes=3)


PUBLISHED = {"cvt_13": 20.0, "cvt_21": 31.6, "cvt_w24": 277.3}

# How `randomize` re-draws the reference: LayerNorm / BatchNorm scales ~ 1 + N(0, 0.1),
# the head ~ N(0, 0.5), everything else ~ N(0, 0.05); BatchNorm running means ~
# N(0, 0.1) and variances ~ U(0.5, 1.5).
STYLE = dict(norms=("LayerNorm", "BatchNorm2d"), wide=("classifier",), bn_mean_std=0.1)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_param_counts_match_paper(name):
  m = create_model(name)
  shapes = jax.eval_shape(lambda x: m.init(jax.random.PRNGKey(0), x),
                          jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))
  got, want = n_params(shapes["params"]) / 1e6, PUBLISHED[name]
  assert abs(got - want) / want < 0.01, (name, got, want)
  assert "batch_stats" in shapes


@pytest.mark.slow
def test_outputs_batch_stats_and_bad_size():
  m = ConvolutionalVisionTransformer(**TINY, drop_path_rate=0.3, head_zero_init=False)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 32, 32, 3))

  @jax.jit  # one compilation for everything
  def run(x):
    variables = m.init(jax.random.PRNGKey(1), x)
    train = m.apply(variables, x, train=True, mutable=["batch_stats"],
                    rngs={"dropout": jax.random.PRNGKey(2)})
    return variables, m.apply(variables, x), train

  variables, (logits, out), ((train_logits, _), updates) = run(x)
  assert logits.shape == (2, 3)
  assert out["stage_0"].shape == (2, 8, 8, 8) and out["stage_1"].shape == (2, 4, 4, 16)
  assert out["pre_logits"].shape == (2, 16)
  assert train_logits.shape == (2, 3)
  old = jax.tree_util.tree_leaves(variables["batch_stats"])
  new = jax.tree_util.tree_leaves(updates["batch_stats"])
  assert any(not np.allclose(a, b) for a, b in zip(old, new))  # statistics move
  # Any size floors as HF (parity: tests/test_any_size.py): 36 -> 9 -> 5.
  _, big = jax.eval_shape(m.apply, variables, jnp.zeros((1, 36, 36, 3)))
  assert big["stage_1"].shape[1:3] == (5, 5)


# ---------------------------------------------------------------------------
# Parity with HF transformers.

def test_hf_cvt_parity(torch, transformers):
  # HF indexes its drop-path list by stage, so depth[i] must exceed i.
  cfg = transformers.CvtConfig(num_labels=5, embed_dim=[8, 16, 24], num_heads=[1, 2, 3],
                               depth=[1, 2, 3], mlp_ratio=[2.0, 2.0, 2.0])
  ref = randomize(transformers.CvtForImageClassification(cfg), **STYLE)
  x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
  with torch.no_grad():
    want = ref(pixel_values=x).logits.numpy()
  cv = hf_cvt_to_vitjax(ref.state_dict(), cfg)
  variables, kw = cv.variables, cv.model_kwargs
  assert kw["depths"] == (1, 2, 3) and kw["num_heads"] == (1, 2, 3)
  got, _ = jax.jit(ConvolutionalVisionTransformer(**kw).apply)(
      variables, jnp.asarray(x.numpy().transpose(0, 2, 3, 1)))
  diff = max_abs_diff(want, got)
  assert diff <= TOL, diff


def test_hf_cvt_rejects_other_weights():
  with pytest.raises(UserError, match="Not a HF CvT"):
    hf_cvt_to_vitjax({"foo.weight": np.zeros((2, 2))})
