"""int8 weight quantization: exact per-channel arithmetic, and the tool on a trained run."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vitjax.compress import dequantize_params, quantize_params, quantized_size_bytes
from vitjax.config import default_config
from vitjax.train import train_and_evaluate


def test_per_channel_symmetric_int8():
  r = np.random.RandomState(0)
  w = r.randn(6, 3).astype(np.float32) * np.array([0.01, 1.0, 100.0], np.float32)
  params = {"dense": {"kernel": w, "bias": np.ones(3, np.float32)},
            "pos_embedding": r.randn(1, 4, 3).astype(np.float32)}
  q = quantize_params(params)
  k = q["dense"]["kernel"]
  assert k["int8"].dtype == np.int8 and np.abs(k["int8"]).max() == 127
  np.testing.assert_allclose(k["scale"], np.abs(w).max(0) / 127, rtol=1e-6)
  deq = dequantize_params(q)
  err = np.abs(np.asarray(deq["dense"]["kernel"]) - w)
  assert (err <= k["scale"] / 2 + 1e-7).all()  # round-to-nearest, per channel
  # The tiny channel keeps its relative precision (per-channel, not per-tensor).
  assert err[:, 0].max() < 1e-4
  assert deq["dense"]["bias"] is params["dense"]["bias"]
  assert deq["pos_embedding"] is params["pos_embedding"]
  stored, full = quantized_size_bytes(q)
  assert full == 4 * (18 + 3 + 12) and stored == 18 + 4 * 3 + 4 * (3 + 12)


def test_conv_kernels_scale_per_output_channel():
  w = np.random.RandomState(1).randn(3, 3, 4, 5).astype(np.float32)
  k = quantize_params({"conv": {"kernel": w}})["conv"]["kernel"]
  assert k["scale"].shape == (5,)
  np.testing.assert_allclose(k["scale"], np.abs(w).max((0, 1, 2)) / 127, rtol=1e-6)


@pytest.mark.slow
def test_quantized_accuracy_of_a_trained_run(tmp_path):
  from vitjax.tools.quantize import quantized_accuracy  # pylint: disable=g-import-not-at-top
  c = default_config()
  c.model.update(depth=2, hidden_size=32, mlp_dim=64, num_heads=2)
  c.input.update(image_size=16, train_augment="none", flip=False)
  c.batch_size, c.eval_batch_size = 128, 120
  c.total_steps, c.log_every_steps, c.eval_every_steps = 150, 50, 150
  c.optimizer.update(learning_rate=3e-3, warmup_steps=20)
  c.progress_bar = False
  wd = str(tmp_path / "run")
  final = train_and_evaluate(c, wd)
  r8 = quantized_accuracy(wd, 8)
  assert r8["fp32_accuracy"] == pytest.approx(final["eval/accuracy"], abs=1e-6)
  assert r8["fp32_accuracy"] > 0.8
  assert abs(r8["change_points"]) < 1.0
  assert r8["param_bytes_quantized"] < 0.4 * r8["param_bytes_fp32"]
  r2 = quantized_accuracy(wd, 2)  # 3 levels per channel: clearly worse
  assert r2["int_accuracy"] < r8["int_accuracy"] - 0.05


def test_per_tensor_scale_and_fake_quantize_straight_through():
  from vitjax.compress.quantize import fake_quantize  # pylint: disable=g-import-not-at-top
  r = np.random.RandomState(2)
  w = r.randn(5, 4).astype(np.float32) * np.array([0.01, 1.0, 3.0, 0.5], np.float32)
  params = {"dense": {"kernel": w, "bias": np.ones(4, np.float32)}}
  qt = quantize_params(params, bits=8, per_channel=False)["dense"]["kernel"]
  np.testing.assert_allclose(qt["scale"], np.full(4, np.abs(w).max() / 127), rtol=1e-6)
  for per_channel in (True, False):
    fq = fake_quantize(params, bits=4, per_channel=per_channel)
    deq = dequantize_params(quantize_params(params, bits=4, per_channel=per_channel))
    np.testing.assert_allclose(fq["dense"]["kernel"], deq["dense"]["kernel"], atol=1e-6)
    assert fq["dense"]["bias"] is params["dense"]["bias"]
  # Straight-through: the gradient of sum(c * fq(w)) w.r.t. w is c.
  c = r.randn(5, 4).astype(np.float32)
  g = jax.grad(lambda p: jnp.sum(c * fake_quantize(p, bits=4)["dense"]["kernel"]))(
      {"dense": {"kernel": jnp.asarray(w)}})
  np.testing.assert_allclose(g["dense"]["kernel"], c, rtol=1e-6)
