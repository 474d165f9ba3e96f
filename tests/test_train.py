"""The trainer end to end: training, sharding, multi-host, resume, bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import FAST, ROOT, free_port, run_main
from vitjax.metric_writer import read_metrics


def losses(workdir):
  return {r["step"]: r["train/loss"] for r in read_metrics(workdir) if "train/loss" in r}


def last(workdir, key):
  return [r[key] for r in read_metrics(workdir) if key in r][-1]


@pytest.mark.slow
def test_quickstart_short_run_learns_and_writes_metrics(tmp_path):
  wd = str(tmp_path / "wd")
  p = run_main(wd, "progress_bar=False", "total_steps=150", "log_every_steps=10", "eval_every_steps=75",
               "optimizer.warmup_steps=10", "batch_size=64", "input.crop_padding=1")
  recs = read_metrics(wd)
  acc = [r["eval/accuracy"] for r in recs if "eval/accuracy" in r]
  assert len(acc) == 2 and acc[-1] > 0.5, acc   # far above the 0.1 of chance
  l = losses(wd)
  assert l[150] < l[10]
  assert "final: " in p.stdout and "eval/accuracy" in p.stdout
  assert os.path.isdir(os.path.join(wd, "checkpoints", "150"))
  assert any(f.startswith("events") for f in os.listdir(os.path.join(wd, "tb")))
  assert any("train/compile_time_s" in r for r in recs)


@pytest.mark.slow
def test_eight_devices_match_one_device(tmp_path):
  common = ("progress_bar=False", "total_steps=20", "log_every_steps=1",
            "eval_every_steps=20", "batch_size=64", "eval_batch_size=40")  # the quickstart model
  run_main(str(tmp_path / "one"), *common, devices=1)
  run_main(str(tmp_path / "eight"), *common, devices=8)
  a, b = losses(str(tmp_path / "one")), losses(str(tmp_path / "eight"))
  assert sorted(a) == list(range(1, 21)) and sorted(b) == sorted(a)
  rel = max(abs(a[s] - b[s]) / abs(a[s]) for s in a)
  assert rel < 1e-5, rel
  assert a[20] != a[1]


@pytest.mark.slow
def test_two_processes_match_single_process(tmp_path):
  common = ("progress_bar=False", "total_steps=20", "log_every_steps=1",
            "eval_every_steps=20", "batch_size=64", "eval_batch_size=40")  # the quickstart model
  run_main(str(tmp_path / "single"), *common, devices=1)
  port = free_port()
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
  wd = str(tmp_path / "multi")
  procs = [subprocess.Popen(
      [sys.executable, "-m", "vitjax.main", f"--config={ROOT}/configs/quickstart.py",
       f"--workdir={wd}", f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
       f"--process_id={i}"] + [f"--config.{o}" for o in common],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  a, b = losses(str(tmp_path / "single")), losses(wd)
  assert sorted(a) == sorted(b) == list(range(1, 21))
  rel = max(abs(a[s] - b[s]) / abs(a[s]) for s in a)
  assert rel < 1e-5, rel
  assert abs(last(wd, "eval/accuracy") - last(str(tmp_path / "single"), "eval/accuracy")) < 1e-6


def _start(wd, *overrides):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
             PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
  return subprocess.Popen(
      [sys.executable, "-m", "vitjax.main", f"--config={ROOT}/configs/quickstart.py",
       f"--workdir={wd}"] + [f"--config.{o}" for o in overrides],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_step(wd, step, proc, timeout=300):
  t0 = time.time()
  while time.time() - t0 < timeout:
    if os.path.exists(os.path.join(wd, "metrics.jsonl")):
      done = [r["step"] for r in read_metrics(wd) if "train/loss" in r]
      if done and max(done) >= step:
        return
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    time.sleep(0.05)
  raise AssertionError("training did not reach step %d" % step)


RESUME = FAST + ("total_steps=40", "log_every_steps=1", "eval_every_steps=20",
                 "checkpoint_every_steps=5", "model.drop_path_rate=0.1")


@pytest.mark.slow
def test_sigkill_then_rerun_equals_uninterrupted(tmp_path):
  ref = str(tmp_path / "ref")
  run_main(ref, *RESUME)
  wd = str(tmp_path / "killed")
  kill_at = int(np.random.RandomState(int(time.time())).randint(8, 33))
  p = _start(wd, *RESUME)
  _wait_for_step(wd, kill_at, p)
  p.send_signal(signal.SIGKILL)
  p.wait()
  assert not any(r.get("step") == 40 and "eval/accuracy" in r for r in read_metrics(wd))
  run_main(wd, *RESUME)
  a, b = losses(ref), losses(wd)   # steps redone after the kill are logged twice: same values
  for s in a:
    assert abs(a[s] - b[s]) <= 1e-6 * abs(a[s]), (s, a[s], b[s], kill_at)
  assert last(ref, "eval/accuracy") == last(wd, "eval/accuracy")
  assert last(ref, "eval/loss") == pytest.approx(last(wd, "eval/loss"), rel=1e-6)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_resume_finishes(tmp_path):
  wd = str(tmp_path / "wd")
  overrides = RESUME[:-2] + ("checkpoint_every_steps=1000",)
  p = _start(wd, *overrides)
  _wait_for_step(wd, 12, p)
  p.send_signal(signal.SIGTERM)
  _, err = p.communicate(timeout=120)
  assert p.returncode == 0, err[-2000:]
  saved = [int(d) for d in os.listdir(os.path.join(wd, "checkpoints")) if d.isdigit()]
  assert saved and 12 <= max(saved) < 40
  run_main(wd, *overrides)
  assert max(int(d) for d in os.listdir(os.path.join(wd, "checkpoints")) if d.isdigit()) == 40


# ---- bad input: one clear message, exit status 2, workdir untouched ----

def _user_error(p):
  assert p.returncode == 2, p.stderr[-3000:]
  return p.stderr


def test_unknown_config_key(tmp_path):
  p = run_main(str(tmp_path / "wd"), "optimizer.learning_rat=0.1", check=False)
  assert p.returncode != 0
  assert "learning_rat" in p.stderr and "Traceback" not in p.stderr


def test_unknown_key_in_a_config_file(tmp_path):
  cfg = tmp_path / "bad.py"
  cfg.write_text("from configs.quickstart import get_config as g\n"
                 "def get_config(arg=None):\n  c = g()\n  c.unlock()\n  c.optimiser = 1\n  return c\n")
  env = {"PYTHONPATH": ROOT}
  p = run_main(str(tmp_path / "wd"), config=str(cfg), check=False, env=env)
  err = _user_error(p)
  assert "Unknown config key 'optimiser'" in err and "optimizer" in err and "Traceback" not in err


def test_batch_not_divisible_by_devices(tmp_path):
  p = run_main(str(tmp_path / "wd"), *FAST, "batch_size=30", devices=8, check=False)
  err = _user_error(p)
  assert "batch_size=30" in err and "8 devices" in err and "Traceback" not in err


def test_tfds_dataset_not_downloaded(tmp_path):
  p = run_main(str(tmp_path / "wd"), *FAST, "dataset.name=cifar100",
               f"dataset.data_dir={tmp_path / 'tfds'}", check=False)
  err = _user_error(p)
  assert "cifar100" in err and "tfds build" in err and "Traceback" not in err


@pytest.mark.slow
def test_nan_loss_stops_naming_step_and_keeps_checkpoint(tmp_path):
  wd = str(tmp_path / "wd")
  run_main(wd, *FAST, "total_steps=10", "checkpoint_every_steps=10", "log_every_steps=5")
  before = sorted(os.listdir(os.path.join(wd, "checkpoints")))
  # Continue the same run with an absurd learning rate: it diverges to NaN/Inf.
  p = run_main(wd, *FAST, "total_steps=40", "checkpoint_every_steps=10", "log_every_steps=5",
               "optimizer.learning_rate=1e30", "optimizer.warmup_steps=0", "optimizer.schedule=constant", check=False)
  err = _user_error(p)
  assert "NaN/Inf at step" in err and "Traceback" not in err
  step = int(err.split("NaN/Inf at step ")[1].split(";")[0])
  assert 10 <= step < 40
  after = sorted(os.listdir(os.path.join(wd, "checkpoints")))
  assert "10" in after and set(before) <= set(after)
  saved = [int(d) for d in after if d.isdigit()]
  assert max(saved) <= step   # nothing saved from after the divergence


@pytest.mark.slow
def test_workdir_of_another_model_is_refused_and_untouched(tmp_path):
  wd = str(tmp_path / "wd")
  run_main(wd, *FAST, "total_steps=5", "checkpoint_every_steps=5")
  snapshot = sorted(os.listdir(wd)), open(os.path.join(wd, "metrics.jsonl")).read()
  p = run_main(wd, *FAST, "model_name=deit_tiny_patch16_224", "total_steps=10", check=False)
  err = _user_error(p)
  assert "new --workdir" in err
  # Same model name, other shapes: the checkpoint does not fit.
  p = run_main(wd, *FAST[:-1], "model.hidden_size=64", "model.mlp_dim=64", "total_steps=10",
               check=False)
  err = _user_error(p)
  assert "does not fit" in err and "Traceback" not in err
  assert (sorted(os.listdir(wd)), open(os.path.join(wd, "metrics.jsonl")).read()) == snapshot


@pytest.mark.slow
def test_finetune_from_checkpoint_replaces_head_on_imagefolder(tmp_path):
  """The seed recipe: pretrain, then load, replace the head, smaller LR, evaluate each epoch."""
  from PIL import Image
  from sklearn.datasets import load_digits
  pre = str(tmp_path / "pre")
  run_main(pre, "progress_bar=False", "total_steps=300", "checkpoint_every_steps=300",
           "batch_size=64", "optimizer.warmup_steps=20", "input.crop_padding=1")
  digits = load_digits()
  root = tmp_path / "folder"
  for split, rng in (("train", range(0, 300)), ("val", range(1500, 1700))):
    for i in rng:
      if digits.target[i] < 4:   # a 4-class problem: the head must be replaced
        d = root / split / f"class{digits.target[i]}"
        d.mkdir(parents=True, exist_ok=True)
        img = (digits.images[i] * 255 / 16).astype(np.uint8)
        Image.fromarray(img).resize((16, 16)).save(d / f"{i}.png")
  ft = ("progress_bar=False", "batch_size=32", "dataset.name=imagefolder",
        f"dataset.data_dir={root}", "dataset.eval_split=val", "num_epochs=6",
        "eval_every_steps=0", "optimizer.warmup_steps=2", "optimizer.learning_rate=5e-4",
        "input.crop_padding=1")
  wd = str(tmp_path / "ft")
  run_main(wd, *ft, "init_from.checkpoint=" + pre)
  scratch = str(tmp_path / "scratch")
  run_main(scratch, *ft)
  accs = [r["eval/accuracy"] for r in read_metrics(wd) if "eval/accuracy" in r]
  assert len(accs) == 6            # evaluated each epoch
  base = last(scratch, "eval/accuracy")
  assert accs[-1] > 0.8 and accs[-1] > base + 0.1, (accs, base)   # pretrained features transfer
  cfg = json.load(open(os.path.join(wd, "config.json")))
  assert cfg["init_from"]["checkpoint"] == pre
  # A checkpoint of another shape is refused with the parameter named.
  p = run_main(str(tmp_path / "ft2"), *FAST[:-1], "model.hidden_size=48", "model.mlp_dim=64",
               "dataset.name=imagefolder", f"dataset.data_dir={root}", "dataset.eval_split=val",
               "num_epochs=1", "init_from.checkpoint=" + pre, check=False)
  err = _user_error(p)
  assert "does not match the model" in err and "block_0/attn/qkv/kernel" in err
