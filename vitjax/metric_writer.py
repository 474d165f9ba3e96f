"""Where metrics go: `metrics.jsonl`, TensorBoard event files, a progress bar."""

import errno
import json
import os
import shutil
import sys
import time

import jax
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from vitjax.errors import UserError


class MetricWriter:
  """Writes one JSON object per event to `workdir/metrics.jsonl` (process 0).

  Each object has `step` and metric names such as `train/loss` or
  `eval/accuracy`; the same scalars go to TensorBoard event files under
  `workdir/tb` (written with tensorboard's own event writer).

  A run resumed from the checkpoint of step S supersedes what an earlier run
  logged after S: those records move from metrics.jsonl to
  metrics.superseded.jsonl (kept, not deleted), and a TensorBoard session
  start at S + 1 makes TensorBoard drop its events after S. Every logged
  step then has one record, equal to an uninterrupted run's.
  """

  def __init__(self, workdir: str, tensorboard: bool = True, start_step: int = 0):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if not self.enabled:
      return
    self._supersede_after(start_step)
    if tensorboard:
      tb_dir = os.path.join(workdir, "tb")
      earlier = os.path.isdir(tb_dir) and any(f.startswith("events") for f in os.listdir(tb_dir))
      self._tb = EventFileWriter(tb_dir)
      if earlier:
        self._tb.add_event(event_pb2.Event(
            wall_time=time.time(), step=int(start_step) + 1,
            session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))
        self._tb.flush()

  def _supersede_after(self, step: int):
    """Moves records of steps > step to metrics.superseded.jsonl (atomically)."""
    if not os.path.exists(self.path):
      return
    with open(self.path) as f:
      lines = [l for l in f if l.strip()]
    keep, later = [], []
    for line in lines:
      try:
        (later if json.loads(line)["step"] > step else keep).append(line)
      except (ValueError, KeyError, TypeError):  # a line cut short by a kill: superseded
        later.append(line if line.endswith("\n") else line + "\n")
    if not later:
      return
    with open(os.path.join(os.path.dirname(self.path), "metrics.superseded.jsonl"), "a") as f:
      f.writelines(later)
      f.flush()
      os.fsync(f.fileno())
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      f.writelines(keep)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, self.path)

  def write(self, step: int, metrics: dict):
    if not self.enabled:
      return
    record = {"step": int(step)}
    record.update({k: float(v) for k, v in metrics.items()})
    try:
      with open(self.path, "a") as f:
        f.write(json.dumps(record) + "\n")
    except OSError as e:
      if e.errno != errno.ENOSPC:
        raise
      raise UserError(
          f"The disk holding {self.path} is full: writing the metrics of step {step} failed "
          f"({shutil.disk_usage(os.path.dirname(self.path)).free / 2 ** 20:,.1f} MB free). "
          "The checkpoints already written are intact. Free space (or copy the workdir to a "
          "larger disk) and run the same command again to resume.") from None
    if self._tb is not None:
      summary = summary_pb2.Summary(value=[
          summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in metrics.items()])
      self._tb.add_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                         summary=summary))
      self._tb.flush()

  def close(self):
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def read_metrics(workdir: str):
  """All records of `workdir/metrics.jsonl` as a list of dicts."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]


class ProgressBar:
  """One status line: step, loss, images/s, ETA (a line per update when not a tty)."""

  def __init__(self, total_steps: int, enabled: bool = True):
    self.total = total_steps
    self.enabled = enabled and jax.process_index() == 0
    self.tty = sys.stderr.isatty()
    self.start = time.time()

  def update(self, step: int, loss: float, images_per_s: float, start_step: int = 0):
    if not self.enabled:
      return
    done = step - start_step
    left = self.total - step
    eta = (time.time() - self.start) / max(done, 1) * left
    width = 30
    filled = int(width * step / max(self.total, 1))
    bar = "#" * filled + "-" * (width - filled)
    line = (f"[{bar}] step {step}/{self.total}  loss {loss:.4f}  "
            f"{images_per_s:,.0f} img/s  ETA {int(eta) // 60}:{int(eta) % 60:02d}")
    if self.tty:
      sys.stderr.write("\r" + line)
    else:
      sys.stderr.write(line + "\n")
    sys.stderr.flush()

  def close(self):
    if self.enabled and self.tty:
      sys.stderr.write("\n")
