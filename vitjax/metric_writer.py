"""Where metrics go: `metrics.jsonl`, TensorBoard event files, a progress bar."""

import json
import os
import sys
import time

import jax


class MetricWriter:
  """Writes one JSON object per event to `workdir/metrics.jsonl` (process 0).

  Each object has `step` and metric names such as `train/loss` or
  `eval/accuracy`; the same scalars go to TensorBoard under `workdir/tb`.
  """

  def __init__(self, workdir: str, tensorboard: bool = True):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if self.enabled and tensorboard:
      try:
        import tensorflow as tf  # pylint: disable=g-import-not-at-top
        self._tf = tf
        self._tb = tf.summary.create_file_writer(os.path.join(workdir, "tb"))
      except ImportError:
        self._tb = None

  def write(self, step: int, metrics: dict):
    if not self.enabled:
      return
    record = {"step": int(step)}
    record.update({k: float(v) for k, v in metrics.items()})
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    if self._tb is not None:
      with self._tb.as_default():
        for k, v in metrics.items():
          self._tf.summary.scalar(k, float(v), step=int(step))
      self._tb.flush()


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
