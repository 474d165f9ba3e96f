"""python -m vitjax.tools.attention: per-head maps and rollout of a real run."""

import os

import numpy as np
import pytest
from PIL import Image

from vitjax.config import default_config
from vitjax.tools.attention import main, rollout, token_map
from vitjax.train import train_and_evaluate


def test_rollout_hand_computed():
  # One layer, one head: rollout = 0.5 * W + 0.5 * I (rows already sum to 1).
  w = np.array([[[0.2, 0.8], [0.6, 0.4]]])
  np.testing.assert_allclose(rollout([w]), [[0.6, 0.4], [0.3, 0.7]])
  # Two layers multiply: A2 @ A1.
  a1 = 0.5 * w[0] + 0.5 * np.eye(2)
  np.testing.assert_allclose(rollout([w, w]), a1 @ a1)
  m = token_map(np.arange(2 * 5 * 5, dtype=float).reshape(2, 5, 5) / 100, prefix=1)
  assert m.shape == (2, 2, 2) and m[1, 0, 1] == (25 + 2) / 100


@pytest.mark.slow
def test_tool_writes_maps_of_a_trained_run(tmp_path):
  c = default_config()
  c.model.update(depth=2, hidden_size=16, mlp_dim=32, num_heads=2)
  c.input.update(image_size=16, train_augment="none", flip=False)
  c.batch_size, c.eval_batch_size = 64, 120
  c.total_steps, c.log_every_steps, c.eval_every_steps = 4, 2, 4
  c.progress_bar = False
  wd = str(tmp_path / "run")
  train_and_evaluate(c, wd)
  img = tmp_path / "x.png"
  Image.fromarray((np.random.RandomState(0).rand(40, 30, 3) * 255).astype(np.uint8)).save(img)
  main([f"--workdir={wd}", f"--image={img}", f"--out={tmp_path / 'maps'}"])
  files = sorted(os.listdir(tmp_path / "maps"))
  assert files == ["attention.npz", "layer_00.png", "layer_01.png", "rollout.png"]
  raw = np.load(tmp_path / "maps" / "attention.npz")
  w = raw[sorted(raw.files)[0]]
  assert w.shape == (2, 17, 17)  # heads, (class token + 16 patches)^2
  np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)
  main([f"--workdir={wd}", "--index=5", f"--out={tmp_path / 'maps2'}"])
  assert os.path.exists(tmp_path / "maps2" / "rollout.png")
