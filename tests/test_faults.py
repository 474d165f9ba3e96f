"""Faults a long run meets, injected for real (files damaged, processes killed,
a full or read-only filesystem): the run resumes from the newest usable
checkpoint, loses nothing, and says what happened in one message."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import FAST, ROOT, free_port, run_main
from experiments.fault_injection import (damage, final_eval, kill_inside_a_checkpoint_write,
                                         results)
from vitjax.metric_writer import MetricWriter, read_metrics

RUN = FAST + ("total_steps=40", "log_every_steps=1", "eval_every_steps=20",
              "checkpoint_every_steps=5")
@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """An uninterrupted run: checkpoints 30, 35, 40 (keep 3)."""
  wd = str(tmp_path_factory.mktemp("faults") / "ref")
  run_main(wd, *RUN)
  return wd


def _tb_scalars(workdir, tag):
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  acc = event_accumulator.EventAccumulator(os.path.join(workdir, "tb"),
                                           purge_orphaned_data=True)
  acc.Reload()
  return [(e.step, e.value) for e in acc.Scalars(tag)]


@pytest.mark.slow
@pytest.mark.parametrize("how", ["overwrite", "truncate", "delete"])
def test_damaged_latest_checkpoint_resumes_from_the_previous_one(reference, tmp_path, how):
  wd = str(tmp_path / "wd")
  shutil.copytree(reference, wd)
  damage(os.path.join(wd, "checkpoints", "40"), how)
  p = run_main(wd, *RUN)
  assert "Checkpoint step 40" in p.stderr and "40.damaged" in p.stderr, p.stderr[-3000:]
  assert "Event loop is closed" not in p.stderr  # the failure is one line, not a traceback pile
  assert os.path.isdir(os.path.join(wd, "checkpoints", "40.damaged"))  # kept, renamed
  for k, v in final_eval(reference).items():
    assert final_eval(wd)[k] == pytest.approx(v, rel=1e-6), k
  # metrics.jsonl: what the first run logged after step 35 is superseded, not duplicated.
  mine, ref = results(wd), results(reference)
  assert sorted(mine) == sorted(ref)
  for k, r in ref.items():
    for name, v in r.items():
      assert mine[k][name] == pytest.approx(v, rel=1e-6, abs=1e-7), (k, name)
  superseded = [json.loads(l) for l in open(os.path.join(wd, "metrics.superseded.jsonl"))]
  assert {r["step"] for r in superseded} == set(range(36, 41))
  # TensorBoard shows one value per step too (the resumed run's session start purges 36..40).
  steps = [s for s, _ in _tb_scalars(wd, "train/loss")]
  assert steps == list(range(1, 41))


@pytest.mark.slow
def test_no_checkpoint_restores_one_message_exit_2_nothing_deleted(reference, tmp_path):
  wd = str(tmp_path / "wd")
  shutil.copytree(reference, wd)
  for step in (30, 35, 40):
    damage(os.path.join(wd, "checkpoints", str(step)), "truncate")
  p = run_main(wd, *RUN, check=False)
  assert p.returncode == 2, p.stderr[-3000:]
  assert "No checkpoint in" in p.stderr and "can be restored" in p.stderr
  assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == [
      "30.damaged", "35.damaged", "40.damaged"]


@pytest.mark.slow
@pytest.mark.parametrize("nth_save", [2, 5])
def test_sigkill_inside_a_checkpoint_write_then_the_same_command(reference, tmp_path,
                                                                 nth_save):
  wd = str(tmp_path / "wd")
  overrides = RUN[:-1] + ("checkpoint_every_steps=1",)  # a save every step: many windows
  step = kill_inside_a_checkpoint_write(wd, list(overrides), nth_save)
  names = os.listdir(os.path.join(wd, "checkpoints"))
  assert any(n.startswith(f"{step}.") and "tmp" in n for n in names), names  # caught mid-write
  run_main(wd, *overrides)
  assert final_eval(wd)["eval/accuracy"] == final_eval(reference)["eval/accuracy"]
  assert final_eval(wd)["eval/loss"] == pytest.approx(final_eval(reference)["eval/loss"], rel=1e-6)
  assert sorted(results(wd)) == sorted(results(reference))


def _mount_tmpfs(path, size):
  os.makedirs(path, exist_ok=True)
  p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path],
                     capture_output=True, text=True)
  if p.returncode != 0:
    pytest.skip(f"cannot mount a tmpfs here (needs root): {p.stderr.strip()}")
  return path


@pytest.fixture
def small_fs(tmp_path):
  mounted = []

  def mount(size):
    mounted.append(_mount_tmpfs(str(tmp_path / f"fs{len(mounted)}"), size))
    return mounted[-1]

  yield mount
  for path in mounted:
    subprocess.run(["umount", "-l", path], check=False)


@pytest.mark.slow
def test_disk_full_during_a_save_one_message_exit_2_earlier_checkpoints_restore(
    reference, tmp_path, small_fs):
  fs = small_fs("1500k")  # room for the start and a few checkpoints, not for 40
  wd = os.path.join(fs, "wd")
  overrides = RUN[:-1] + ("checkpoint_every_steps=1", "keep_checkpoints=100")
  p = run_main(wd, *overrides, check=False)
  assert p.returncode == 2, p.stderr[-3000:]
  assert "is full: saving the checkpoint of step" in p.stderr, p.stderr[-3000:]
  # Orbax's own tracebacks of the failed write are not shown; the message ends the output.
  assert "No space left on device" not in p.stderr.split("vitjax error:")[0], p.stderr[-3000:]
  assert p.stderr.strip().splitlines()[-1].startswith("vitjax error: The disk holding")
  # Moved to a larger disk, the same command resumes from what was saved.
  moved = str(tmp_path / "moved")
  shutil.copytree(wd, moved)
  run_main(moved, *overrides)
  assert final_eval(moved)["eval/accuracy"] == final_eval(reference)["eval/accuracy"]


@pytest.mark.slow
def test_workdir_problems_found_at_start_up(tmp_path, small_fs):
  tiny = small_fs("64k")  # less than one checkpoint of the quickstart model
  p = run_main(os.path.join(tiny, "wd"), *RUN, check=False)
  assert p.returncode == 2 and "MB free, but one checkpoint of this run needs" in p.stderr, \
      p.stderr[-2000:]
  assert not os.path.exists(os.path.join(tiny, "wd", "checkpoints"))
  ro = small_fs("1m")
  os.makedirs(os.path.join(ro, "wd"))
  with open(os.path.join(ro, "wd", "notes.txt"), "w") as f:
    f.write("mine")
  subprocess.run(["mount", "-o", "remount,ro", ro], check=True)
  p = run_main(os.path.join(ro, "wd"), *RUN, check=False)
  assert p.returncode == 2 and "cannot be written" in p.stderr, p.stderr[-2000:]
  assert os.listdir(os.path.join(ro, "wd")) == ["notes.txt"]


def test_metric_writer_supersedes_records_after_the_resumed_step(tmp_path):
  wd = str(tmp_path)
  w = MetricWriter(wd)
  for s in (1, 2, 3, 4):
    w.write(s, {"train/loss": float(s)})
  w.close()
  with open(os.path.join(wd, "metrics.jsonl"), "a") as f:
    f.write('{"step": 5, "train/lo')  # a line cut short by a kill
  w = MetricWriter(wd, start_step=2)
  w.write(3, {"train/loss": 30.0})
  w.close()
  assert [(r["step"], r["train/loss"]) for r in read_metrics(wd)] == [(1, 1.0), (2, 2.0),
                                                                      (3, 30.0)]
  with open(os.path.join(wd, "metrics.superseded.jsonl")) as f:
    lines = f.read().splitlines()
  assert [json.loads(l)["step"] for l in lines[:2]] == [3, 4] and lines[2].startswith('{"step": 5')
  assert _tb_scalars(wd, "train/loss") == [(1, 1.0), (2, 2.0), (3, 30.0)]


@pytest.mark.slow
def test_a_lost_process_stops_the_others_and_the_pair_resumes_exactly(tmp_path):
  common = FAST + ("total_steps=60", "log_every_steps=1", "eval_every_steps=60",
                   "checkpoint_every_steps=10")
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
             PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")

  def pair(wd, heartbeat=10):
    port = free_port()
    return [subprocess.Popen(
        [sys.executable, "-m", "vitjax.main", f"--config={ROOT}/configs/quickstart.py",
         f"--workdir={wd}", f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
         f"--process_id={i}", f"--heartbeat_timeout={heartbeat}"] +
        [f"--config.{o}" for o in common],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for i in range(2)]

  def finish(procs):
    errs = [p.communicate(timeout=600)[1] for p in procs]
    for p, err in zip(procs, errs):
      assert p.returncode == 0, err[-3000:]

  ref = str(tmp_path / "ref")
  finish(pair(ref))
  wd = str(tmp_path / "wd")
  procs = pair(wd)
  t0 = time.time()
  while not (os.path.exists(os.path.join(wd, "metrics.jsonl")) and
             any(r.get("step", 0) >= 25 for r in read_metrics(wd))):
    assert time.time() - t0 < 600 and procs[0].poll() is None
    time.sleep(0.1)
  procs[1].send_signal(signal.SIGKILL)
  killed = time.time()
  _, err = procs[0].communicate(timeout=120)
  waited = time.time() - killed
  procs[1].wait()
  # The survivor stops within the bound. Which message it dies with depends on what
  # notices first: JAX's heartbeat check names the lost task ("stopped sending
  # heartbeats: 1"); a collective that was waiting on the dead peer fails with the
  # collective library's own error, which does not name it.
  assert procs[0].returncode != 0 and waited < 60, (waited, err[-2000:])
  finish(pair(wd))
  a = {s: r["train/loss"] for s, r in ((r["step"], r) for r in read_metrics(ref))
       if "train/loss" in r}
  b = {r["step"]: r["train/loss"] for r in read_metrics(wd) if "train/loss" in r}
  assert sorted(a) == sorted(b) == list(range(1, 61))
  np.testing.assert_allclose([b[s] for s in a], [a[s] for s in a], rtol=1e-6)
  assert final_eval(wd)["eval/accuracy"] == final_eval(ref)["eval/accuracy"]
