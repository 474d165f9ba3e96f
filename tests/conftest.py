"""Shared test helpers: running vitjax as a user would, in a subprocess."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_main(workdir, *overrides, config="configs/quickstart.py", devices=1, env=None,
             timeout=600, check=True):
  """`python -m vitjax.main` with `--config.k=v` overrides; returns the CompletedProcess."""
  e = dict(os.environ)
  e["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  e["PYTHONPATH"] = ROOT + os.pathsep + e.get("PYTHONPATH", "")
  e.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  e.update(env or {})
  cmd = [sys.executable, "-m", "vitjax.main", f"--config={os.path.join(ROOT, config)}",
         f"--workdir={workdir}"] + [f"--config.{o}" for o in overrides]
  p = subprocess.run(cmd, cwd=ROOT, env=e, capture_output=True, text=True, timeout=timeout)
  if check and p.returncode != 0:
    raise AssertionError(f"vitjax.main failed ({p.returncode}):\n{p.stderr[-4000:]}")
  return p


def tiny_digits_config(**fields):
  """A 4-step run of a one-block ViT on 8 px digits (a finished run for tool tests);
  `fields` override top-level config fields (seed=..., ema_decay=...)."""
  from vitjax.config import default_config  # pylint: disable=g-import-not-at-top
  c = default_config()
  c.model.update(hidden_size=16, depth=1, num_heads=2, mlp_dim=16, patch_size=4)
  c.input.update(image_size=8, train_augment="none", flip=False)
  c.batch_size, c.eval_batch_size = 32, 120
  c.total_steps = 4
  c.log_every_steps = c.eval_every_steps = c.checkpoint_every_steps = 4
  c.optimizer.update(learning_rate=3e-2, warmup_steps=0)
  c.progress_bar = False
  c.update(fields)
  return c


def vitjax_models():
  """Registered model names built by vitjax itself (tests may register their own)."""
  from vitjax.models import create_model, list_models  # pylint: disable=g-import-not-at-top
  return [n for n in list_models() if type(create_model(n)).__module__.startswith("vitjax.")]


def free_port() -> int:
  """A free TCP port on 127.0.0.1 (a coordinator for multi-process tests)."""
  import socket  # pylint: disable=g-import-not-at-top
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


@pytest.fixture
def main_runner():
  return run_main


# Overrides that make the quickstart a few-second smoke run.
FAST = ("model.depth=1", "model.hidden_size=32", "model.mlp_dim=64", "model.num_heads=2",
        "batch_size=32", "eval_batch_size=40", "progress_bar=False")


@pytest.fixture(scope="session")
def torch():
  """PyTorch, the test oracles' framework (skips the test where it is missing)."""
  torch = pytest.importorskip("torch")
  pytest.importorskip("safetensors.torch")
  torch.set_num_threads(1)
  return torch


@pytest.fixture(scope="session")
def transformers(torch):
  """HF transformers on PyTorch CPU: reference models built from configs."""
  del torch
  return pytest.importorskip("transformers")


def pytest_configure(config):
  """Registers the `slow` marker (deselect with -m "not slow")."""
  config.addinivalue_line("markers", "slow: a test slower than ~20 s (-m 'not slow' skips it)")
