"""vitjax/allocator.py: which malloc a process has, and what tcmalloc changes."""

import os
import subprocess
import sys

import pytest

from vitjax import allocator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Calls a jitted program whose 64 MiB output is allocated afresh on every call
# and prints the median call's minor page faults after warm-up.
_FAULTS = """
import resource, sys
import jax, jax.numpy as jnp
from vitjax import allocator
if len(sys.argv) > 1:
  allocator.reexec_with_tcmalloc(["-c", _SRC])   # _SRC: this script's text
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


def _run(*args):
  src = "_SRC = " + repr(_FAULTS) + "\n" + _FAULTS
  out = subprocess.run([sys.executable, "-c", src, *args], capture_output=True, text=True,
                       cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"), check=True)
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


def test_glibc_malloc_page_faults_on_every_step():
  name, faults = _run()
  if name != "system":
    pytest.skip(f"this test process runs with {name}")
  if _transparent_huge_pages_always():
    pytest.skip("transparent huge pages on: 2 MiB faults, far fewer of them")
  # 64 MiB of fresh pages = 16384 faults of 4 KiB per call.
  assert faults > 2000, faults


@pytest.mark.skipif(allocator.find_tcmalloc() is None, reason="tcmalloc not installed")
def test_tcmalloc_reexec_keeps_the_pages():
  name, faults = _run("tcmalloc")
  assert name == "tcmalloc"
  assert faults < 500, faults
