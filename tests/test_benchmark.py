"""experiments/benchmark.py runs and reports; attention formulations agree."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT
from experiments import benchmark
from vitjax.models import create_model
from vitjax.models.layers.attention import dot_product_attention

REQUIRED = ("impl", "mode", "images_per_s", "mfu", "peak_memory_mb")
TINY = ["--model", "vit_tiny_patch16_224", "--model-kw", '{"depth": 1, "num_heads": 3}',
        "--batch", "2", "--resolution", "32", "--num-classes", "10", "--runs", "5",
        "--warmup", "1", "--peak-size", "256"]


def _json_lines(out):
  return [json.loads(l) for l in out.splitlines() if l.startswith("{")]


def test_harness_vitjax_inference_and_train(capsys):
  benchmark.main(TINY + ["--train"])
  rows = _json_lines(capsys.readouterr().out)
  assert [(r["impl"], r["mode"]) for r in rows] == [("vitjax", "inference"), ("vitjax", "train")]
  for r in rows:
    assert all(k in r for k in REQUIRED), r
    assert r["images_per_s"] > 0 and 0 < r["mfu"] and r["peak_memory_mb"] > 0
    assert r["gflops_per_step"] > 0 and len(r["step_ms_runs"]) >= 5
  # The train step (forward + backward) costs more FLOPs than the forward.
  assert rows[1]["gflops_per_step"] > 2 * rows[0]["gflops_per_step"]


def test_harness_pytorch_eager(capsys, torch, transformers):
  del torch, transformers
  benchmark.main(TINY + ["--impls", "vitjax,pytorch-eager"])
  rows = _json_lines(capsys.readouterr().out)
  assert [r["impl"] for r in rows] == ["vitjax", "pytorch-eager"]
  for r in rows:
    assert all(k in r for k in REQUIRED) and r["images_per_s"] > 0


def test_hf_counterpart_has_same_parameter_count(transformers):
  args = benchmark.parse_args(TINY)
  vj = benchmark.build_vitjax(args, jnp.float32)
  shapes = jax.eval_shape(vj.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
  n_vj = sum(np.prod(s.shape) for s in jax.tree_util.tree_leaves(shapes["params"]))
  hf = benchmark.hf_model(args, vj, transformers)
  assert n_vj == sum(p.numel() for p in hf.parameters())


def _qkv(n, heads=2, d=16, b=2, seed=0):
  keys = jax.random.split(jax.random.PRNGKey(seed), 3)
  return [jax.random.normal(k, (b, n, heads, d), jnp.float32) for k in keys]


@pytest.mark.parametrize("impl", ["chunked", "xla", "fused", "auto"])
def test_attention_impls_match_einsum(impl):
  q, k, v = _qkv(100)
  bias = jax.random.normal(jax.random.PRNGKey(5), (1, 2, 100, 100))
  mask = jax.random.bernoulli(jax.random.PRNGKey(6), 0.8, (2, 1, 100, 100)).at[..., 0].set(True)
  ref = dot_product_attention(q, k, v, bias=bias, mask=mask)
  got = dot_product_attention(q, k, v, bias=bias, mask=mask, impl=impl, chunk_size=32)
  np.testing.assert_allclose(got, ref, atol=1e-5)


def test_chunked_attention_gradient_matches():
  q, k, v = _qkv(70)
  def loss(impl):
    return lambda q, k, v: jnp.sum(jnp.sin(dot_product_attention(q, k, v, impl=impl,
                                                                 chunk_size=16)))
  ref = jax.grad(loss("einsum"), argnums=(0, 1, 2))(q, k, v)
  got = jax.grad(loss("chunked"), argnums=(0, 1, 2))(q, k, v)
  for r, g in zip(ref, got):
    np.testing.assert_allclose(g, r, atol=1e-5)


_RSS_PROBE = """
import sys
import jax
from experiments.benchmark import RssSampler
from vitjax.models.layers.attention import dot_product_attention
n = 4096
q, k, v = [jax.random.normal(jax.random.PRNGKey(i), (1, n, 2, 16)) for i in range(3)]
f = jax.jit(lambda q, k, v: dot_product_attention(q, k, v, impl=sys.argv[1],
                                                  chunk_size=256)).lower(q, k, v).compile()
jax.block_until_ready((q, k, v))
with RssSampler() as rss:
  jax.block_until_ready(f(q, k, v))
print(rss.growth_mb)
"""


def test_chunked_attention_needs_less_memory():
  """Resident memory of a real run (XLA:CPU's YNNPACK fusions hide the logits
  from XLA's memory plan): the plain form holds the [1, 2, 4096, 4096] fp32
  logits (128 MiB), the chunked one a [1, 2, 256, 4096] block (8 MiB) at a time."""
  def rss_growth_mb(impl):
    out = subprocess.run([sys.executable, "-c", _RSS_PROBE, impl], capture_output=True,
                         text=True, check=True, cwd=ROOT,
                         env=dict(os.environ, JAX_PLATFORMS="cpu"))
    return float(out.stdout.split()[-1])
  plain, chunked = rss_growth_mb("einsum"), rss_growth_mb("chunked")
  assert plain >= 100 and chunked < plain / 2, (plain, chunked)


def test_vit_attention_impl_same_logits():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 32, 32, 3))
  kw = dict(depth=1, num_heads=3, num_classes=10, head_zero_init=False)
  ref_model = create_model("vit_tiny_patch16_224", **kw)
  params = ref_model.init(jax.random.PRNGKey(1), x)
  ref = ref_model.apply(params, x)[0]
  for impl in ("chunked", "fused", "auto"):
    got = create_model("vit_tiny_patch16_224", attention_impl=impl, **kw).apply(params, x)[0]
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_summarize_run_reads_compile_time_and_steady_state(tmp_path, capsys):
  recs = [{"step": 1, "train/compile_time_s": 4.0},
          {"step": 50, "train/images_per_s": 500.0},   # holds the compile: ignored
          {"step": 100, "train/images_per_s": 2560.0},
          {"step": 150, "train/images_per_s": 2500.0},
          {"step": 150, "eval/accuracy": 0.98}]
  (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
  (tmp_path / "config.json").write_text(json.dumps({"batch_size": 128}))
  row = benchmark.main(["--summarize", str(tmp_path)])[0]
  assert row["compile_s"] == 4.0 and row["eval_accuracy"] == 0.98
  assert row["steps_per_s"] == pytest.approx(2530.0 / 128)
  assert _json_lines(capsys.readouterr().out)[0]["mode"] == "train-run"


def test_profile_cpu_attributes_time_to_layers(tmp_path):
  # Its own process: XLA's per-op trace events are a flag read when the backend starts.
  out = tmp_path / "profile.json"
  run = subprocess.run(
      [sys.executable, "-m", "experiments.profile_cpu", "--model", "vit_tiny_patch16_224",
       "--model-kw", '{"depth": 1, "num_heads": 3}', "--batch", "2", "--resolution", "32",
       "--num-classes", "10", "--train", "--runs", "2", "--threads", "0", "--json", str(out)],
      capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert run.returncode == 0, run.stderr[-2000:]
  prof = json.loads(out.read_text())
  assert prof["op_total_ms"] > 0 and prof["step_ms"] > 0
  # Both tables split the same op time.
  assert abs(sum(prof["by_kind"].values()) - sum(prof["by_layer"].values())) < 1e-6 * prof["op_total_ms"]
  layers = set(prof["by_layer"])
  assert any(l.endswith("attn/qkv/dot_general") and not l.startswith("backward") for l in layers), layers
  assert any(l.startswith("backward: ") and "mlp/fc1" in l for l in layers), layers
  assert "| kind | ms / step |" in run.stdout
