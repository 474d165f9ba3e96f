"""vitjax/allocator.py: which malloc a process has, and what tcmalloc changes."""

import os
import subprocess
import sys

import pytest

from conftest import ROOT, run_main
from vitjax import allocator

# Calls a jitted program whose 64 MiB output is allocated afresh on every call
# and prints the median call's minor page faults after warm-up.
_FAULTS = """
import resource, sys
import jax, jax.numpy as jnp
from vitjax import allocator
if len(sys.argv) > 1:
  allocator.reexec_with_tcmalloc([__file__])
f = jax.jit(lambda x: jnp.tile(x, (64, 1)) * 2.0)
x = jnp.ones((1024, 256), jnp.float32)     # 1 MiB in, 64 MiB out
for _ in range(3):
  jax.block_until_ready(f(x))
faults = []
for _ in range(7):
  r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  jax.block_until_ready(f(x))
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0)
print(allocator.current(), sorted(faults)[3])     # the median call
"""


def _run(tmp_path, *args):
  script = tmp_path / "faults.py"
  script.write_text(_FAULTS)
  out = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True,
                       cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT),
                       check=True)
  name, faults = out.stdout.split()[-2:]
  return name, float(faults)


def test_current_and_hint():
  assert allocator.current() in ("system", "tcmalloc", "jemalloc")
  assert allocator.hint("gpu") is None
  if allocator.current() == "system" and sys.platform.startswith("linux"):
    assert "malloc" in allocator.hint("cpu")


def _transparent_huge_pages_always():
  try:
    with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
      return "[always]" in f.read()
  except OSError:
    return False


def test_glibc_malloc_page_faults_on_every_step(tmp_path):
  name, faults = _run(tmp_path)
  if name != "system":
    pytest.skip(f"this test process runs with {name}")
  if _transparent_huge_pages_always():
    pytest.skip("transparent huge pages on: 2 MiB faults, far fewer of them")
  # 64 MiB of fresh pages = 16384 faults of 4 KiB per call.
  assert faults > 2000, faults


@pytest.mark.skipif(allocator.find_tcmalloc() is None, reason="tcmalloc not installed")
def test_tcmalloc_reexec_keeps_the_pages(tmp_path):
  name, faults = _run(tmp_path, "tcmalloc")
  assert name == "tcmalloc"
  assert faults < 500, faults


_PREFER = """
import sys
from vitjax import allocator
allocator.prefer_tcmalloc([__file__])
print(allocator.current())
"""


def _prefer(tmp_path, env):
  script = tmp_path / "prefer.py"
  script.write_text(_PREFER)
  out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=ROOT,
                       env=dict(os.environ, PYTHONPATH=ROOT, **env), check=True)
  return out.stdout.split()[-1]


@pytest.mark.skipif(allocator.find_tcmalloc() is None or allocator.current() != "system",
                    reason="needs tcmalloc installed and a glibc-malloc test process")
def test_prefer_tcmalloc_and_the_opt_out(tmp_path):
  assert _prefer(tmp_path, {allocator.ENV: ""}) == "tcmalloc"
  assert _prefer(tmp_path, {allocator.ENV: "system"}) == "system"


@pytest.mark.slow
def test_main_logs_its_malloc(tmp_path):
  p = run_main(str(tmp_path / "w"), "progress_bar=False", "total_steps=2", "log_every_steps=1",
               "eval_every_steps=2", "batch_size=64", "eval_batch_size=40",
               env={allocator.ENV: ""}, timeout=300)
  expected = "malloc: tcmalloc" if allocator.find_tcmalloc() else "CPU run with glibc malloc"
  assert expected in p.stderr, p.stderr[-3000:]
