"""CNN baselines: ResNet, ConvNeXt, EfficientNet.

- Weight import: Hugging Face reference models are built offline from small
  configs, every parameter AND every BatchNorm running statistic re-drawn
  (nothing left at its default), converted, and run in eval mode on the same
  input as vitjax; logits must agree to 1e-4 (1e-3 through eval-mode
  BatchNorm, where float32 accumulation order differs between XLA and torch).
- Parameter counts of the named sizes against the published ones (1%).
- Construction-time errors for sizes the architectures cannot take.
- A small ResNet trains on the digits through the trainer, updating its
  BatchNorm statistics.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vitjax.convert.cnn import (hf_convnext_to_vitjax, hf_efficientnet_to_vitjax,
                               hf_resnet_to_vitjax)
from vitjax.errors import UserError
from vitjax.models import create_model
from vitjax.models.convnext import ConvNeXt
from vitjax.models.efficientnet import EfficientNet
from vitjax.models.resnet import ResNet
from oracle import assert_close, count_params, randomize

# How `randomize` re-draws the references: conv / linear weights ~ N(0, 1/fan_in),
# norm scales ~ 1 + N(0, 0.1), biases and other vectors ~ N(0, 0.1), BN running
# means ~ N(0, 0.2) and running variances ~ U(0.5, 1.5).
STYLE = dict(norms=("BatchNorm2d", "LayerNorm"), norm_suffix="LayerNorm", fan_in=True,
             std=0.1, bn_mean_std=0.2, bn_count=7)


def images(torch, h, w, seed=1):
  x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(seed))
  return x, np.transpose(x.numpy(), (0, 2, 3, 1))  # NCHW, NHWC


def run(model_cls, variables, kwargs, x_nhwc):
  model = model_cls(**kwargs)
  logits, out = jax.jit(lambda v, x: model.apply(v, x))(variables, x_nhwc)
  return np.asarray(logits), out


def init(model, x):
  """model.init, jitted. Partitionable threefry (jax's default) makes XLA:CPU
  compile every distinct random-init shape slowly (~1 s each on 2 cores, and
  a CNN has many); the classic threefry gives other, equally random, values."""
  with jax.threefry_partitionable(False):
    return jax.jit(model.init)(jax.random.PRNGKey(0), x)


# ---------------------------------------------------------------------------
# ResNet.

@pytest.mark.parametrize("case", ["basic", "bottleneck"])
def test_hf_resnet_parity(torch, transformers, case):
  """Basic blocks at 32x32 (a 3-block stage, identity and projection
  shortcuts) and bottlenecks at 64x64 (odd intermediate sizes: 64 -> 32 ->
  16 -> 8 -> 4 -> 2 through stem, pool and strides)."""
  if case == "basic":
    cfg = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 24],
                                    depths=[1, 3, 1], layer_type="basic", num_labels=5)
    size = 32
  else:
    cfg = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[16, 32, 48, 64],
                                    depths=[2, 1, 2, 1], layer_type="bottleneck",
                                    num_labels=7)
    size = 64
  ref = randomize(transformers.ResNetForImageClassification(cfg), **STYLE)
  cv = hf_resnet_to_vitjax(ref.state_dict(), cfg)
  variables, kw = cv.variables, cv.model_kwargs
  assert kw["block"] == case and kw["stage_depths"] == tuple(cfg.depths)
  assert kw["num_classes"] == cfg.num_labels
  x, x_nhwc = images(torch, size, size)
  with torch.no_grad():
    r = ref(pixel_values=x, output_hidden_states=True)
  got, out = run(ResNet, variables, kw, x_nhwc)
  assert_close(f"hf ResNet {case}", r.logits.numpy(), got, 1e-3)
  for i in range(len(cfg.depths)):  # hidden_states[0] is the stem output
    want = np.transpose(r.hidden_states[i + 1].numpy(), (0, 2, 3, 1))
    np.testing.assert_allclose(np.asarray(out[f"stage_{i}"]), want, atol=1e-3)


def test_hf_resnet_refuses_v1_and_new_head(torch, transformers):
  cfg = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                  layer_type="basic", num_labels=3)
  sd = transformers.ResNetForImageClassification(cfg).state_dict()
  with pytest.raises(UserError, match="downsample_in_bottleneck"):
    hf_resnet_to_vitjax(sd, dict(cfg.to_dict(), downsample_in_bottleneck=True))
  cv = hf_resnet_to_vitjax(sd, num_classes=10)
  variables, kw = cv.variables, cv.model_kwargs
  assert kw["num_classes"] == 10 and "head" not in variables["params"]
  with pytest.raises(UserError, match="contradicts"):
    hf_resnet_to_vitjax(sd, stage_depths=(2, 2))


@pytest.mark.parametrize("name,published", [
    ("resnet18", 11.69e6), ("resnet34", 21.80e6), ("resnet50", 25.56e6),
    ("resnet101", 44.55e6)])
def test_resnet_param_counts(name, published):
  assert count_params(name) == pytest.approx(published, rel=0.01)


def test_resnet_bad_sizes_fail_at_construction():
  with pytest.raises(UserError, match="depth 42"):
    create_model("resnet18", depth=42)
  with pytest.raises(UserError, match="block"):
    create_model("resnet50", block="wide")
  with pytest.raises(UserError, match="width=0"):
    create_model("resnet18", width=0)
  with pytest.raises(UserError, match="multiples of 4"):
    create_model("resnet50", stage_widths=(6, 12, 24, 48))


def test_resnet_small_stem_outputs_and_batch_stats():
  m = create_model("resnet18", width=4, small_stem=True, num_classes=3)
  x = jnp.ones((2, 16, 16, 3))
  v = init(m, x)
  (logits, out), new = jax.jit(
      lambda v, x: m.apply(v, x, train=True, mutable=["batch_stats"]))(v, x)
  assert logits.shape == (2, 3) and out["pre_logits"].shape == (2, 32)
  assert [out[f"stage_{i}"].shape[1:] for i in range(4)] == [
      (16, 16, 4), (8, 8, 8), (4, 4, 16), (2, 2, 32)]
  before = jax.tree_util.tree_leaves(v["batch_stats"])
  after = jax.tree_util.tree_leaves(new["batch_stats"])
  assert any(not np.allclose(a, b) for a, b in zip(before, after))


# ---------------------------------------------------------------------------
# ConvNeXt.

@pytest.mark.parametrize("case", ["4stages", "2stages_no_layer_scale"])
def test_hf_convnext_parity(torch, transformers, case):
  """Four stages at 64x64 (HF's head LayerNorm eps 1e-12), and two stages at
  32x32 without layer scale and a bare ConvNextModel (pooled output)."""
  if case == "4stages":
    cfg = transformers.ConvNextConfig(num_stages=4, hidden_sizes=[8, 16, 24, 32],
                                      depths=[1, 2, 1, 1], num_labels=6)
    ref = transformers.ConvNextForImageClassification(cfg)
    size = 64
  else:
    cfg = transformers.ConvNextConfig(num_stages=2, hidden_sizes=[16, 8], depths=[2, 1],
                                      layer_scale_init_value=0.0, layer_norm_eps=1e-6)
    ref = transformers.ConvNextModel(cfg)
    size = 32
  ref = randomize(ref, **STYLE)
  cv = hf_convnext_to_vitjax(ref.state_dict(), cfg)
  variables, kw = cv.variables, cv.model_kwargs
  assert kw["depths"] == tuple(cfg.depths) and kw["widths"] == tuple(cfg.hidden_sizes)
  assert kw["head_norm_eps"] == cfg.layer_norm_eps and "batch_stats" not in variables
  x, x_nhwc = images(torch, size, size)
  with torch.no_grad():
    r = ref(pixel_values=x, output_hidden_states=True)
  want = r.logits if case == "4stages" else r.pooler_output
  got, out = run(ConvNeXt, variables, kw, x_nhwc)
  assert_close(f"hf ConvNeXt {case}", want.numpy(), got, 1e-4)
  for i in range(len(cfg.depths)):
    want_i = np.transpose(r.hidden_states[i + 1].numpy(), (0, 2, 3, 1))
    np.testing.assert_allclose(np.asarray(out[f"stage_{i}"]), want_i, atol=1e-4)


@pytest.mark.parametrize("name,published", [
    ("convnext_tiny", 28.6e6), ("convnext_small", 50.2e6)])
def test_convnext_param_counts(name, published):
  assert count_params(name) == pytest.approx(published, rel=0.01)


def test_convnext_bad_sizes_and_drop_path():
  with pytest.raises(UserError, match="equal length"):
    create_model("convnext_tiny", depths=(1, 1))
  with pytest.raises(UserError, match=">= 1"):
    create_model("convnext_tiny", widths=(8, 0, 8, 8))
  m = create_model("convnext_tiny", depths=(1, 2), widths=(8, 16), num_classes=3,
                   drop_path_rate=0.5, layer_scale_init=1.0)
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 16, 16, 3))
  v = init(m, x)
  with pytest.raises(UserError, match="smaller than its total stride"):
    m.apply(v, jnp.ones((1, 4, 4, 3)))
  apply = jax.jit(lambda v, x, r: m.apply(v, x, train=True, rngs={"dropout": r}))
  a, out = apply(v, x, jax.random.PRNGKey(1))
  b, _ = apply(v, x, jax.random.PRNGKey(2))
  assert out["stage_1"].shape == (4, 2, 2, 16) and not np.allclose(a, b)


# ---------------------------------------------------------------------------
# EfficientNet.

@pytest.mark.parametrize("case", ["b0_layout", "custom"])
def test_hf_efficientnet_parity(torch, transformers, case):
  """B0's seven-stage table at a quarter width and depth x0.3 (one block a
  stage; stride-2 kernels 3 and 5) on 64x64; and a 3-stage custom table with
  depth scaling (residual blocks), width rounding (x0.35), a symmetric
  depthwise padding index and an odd 33x33 input, as a bare EfficientNetModel."""
  if case == "b0_layout":
    cfg = transformers.EfficientNetConfig(width_coefficient=0.25, depth_coefficient=0.3,
                                          hidden_dim=320, num_labels=5)  # 1280 x 0.25
    ref = transformers.EfficientNetForImageClassification(cfg)
    size = 64
  else:
    cfg = transformers.EfficientNetConfig(
        width_coefficient=0.35, depth_coefficient=1.5, hidden_dim=448,
        in_channels=[32, 16, 24], out_channels=[16, 24, 40], kernel_sizes=[3, 5, 3],
        strides=[1, 2, 2], expand_ratios=[1, 6, 4], num_block_repeats=[1, 2, 1],
        depthwise_padding=[5])  # block 5: the stride-2 first block of stage 2
    ref = transformers.EfficientNetModel(cfg)
    size = 33
  ref = randomize(ref, **STYLE)
  cv = hf_efficientnet_to_vitjax(ref.state_dict(), cfg)
  variables, kw = cv.variables, cv.model_kwargs
  x, x_nhwc = images(torch, size, size)
  with torch.no_grad():
    r = ref(pixel_values=x)
  want = r.logits if case == "b0_layout" else r.pooler_output.reshape(2, -1)
  got, out = run(EfficientNet, variables, kw, x_nhwc)
  assert_close(f"hf EfficientNet {case}", want.numpy(), got, 1e-3)
  assert len([k for k in out if k.startswith("stage_")]) == len(cfg.strides)


@pytest.mark.parametrize("name,published", [
    ("efficientnet_b0", 5.29e6), ("efficientnet_b1", 7.79e6), ("efficientnet_b2", 9.11e6),
    ("efficientnet_b3", 12.23e6)])
def test_efficientnet_param_counts(name, published):
  assert count_params(name) == pytest.approx(published, rel=0.01)


def test_efficientnet_bad_sizes():
  with pytest.raises(UserError, match="width_mult=0"):
    create_model("efficientnet_b0", width_mult=0.0)
  with pytest.raises(UserError, match="depth_mult"):
    create_model("efficientnet_b0", depth_mult=-1.0)
  with pytest.raises(UserError, match="odd kernel"):
    create_model("efficientnet_b0", blocks=((1, 4, 1, 32, 16, 1),))
  with pytest.raises(UserError, match="config="):
    hf_efficientnet_to_vitjax({"x": np.zeros(1)}, None)


# ---------------------------------------------------------------------------
# Training through the trainer.

@pytest.mark.slow
def test_resnet_digits_config_trains_and_updates_batch_stats(tmp_path):
  """configs/resnet_digits.py, shrunk (one block a stage, width 8, 8x8
  input, 60 steps), clearly beats chance (10%) and moves the BN statistics."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  from vitjax import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from vitjax.train import train_and_evaluate  # pylint: disable=g-import-not-at-top
  path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "resnet_digits.py")
  spec = importlib.util.spec_from_file_location("resnet_digits", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config()
  assert c.model_name == "resnet18" and c.model.small_stem
  c.model.width = 8
  c.model.stage_depths = (1, 1, 1, 1)
  c.input.update(image_size=8, train_augment="none")
  c.batch_size, c.eval_batch_size = 64, 120
  c.total_steps, c.log_every_steps, c.eval_every_steps = 60, 30, 60
  c.optimizer.warmup_steps = 5
  c.checkpoint_every_steps = 60
  with jax.threefry_partitionable(False):  # see init()
    final = train_and_evaluate(c, str(tmp_path))
  print(f"\nresnet digits (shrunk, 60 steps): eval accuracy {final['eval/accuracy']:.3f}")
  assert final["eval/accuracy"] > 0.5
  _, state = ckpt_lib.load_vitjax_params(str(tmp_path))
  bn = state["batch_stats"]["stem"]["bn"]
  assert not np.allclose(bn["mean"], 0.0) and not np.allclose(bn["var"], 1.0)
