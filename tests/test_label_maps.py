"""Token-labeling score maps from a file: the pipeline's crop geometry, the
crop of a stored map on hand-computed cases, the writer tool against the
teacher's own scores, and a student trained from the file through vitjax.main."""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from conftest import FAST, run_main
from vitjax import data as data_lib
from vitjax.config import default_config
from vitjax.data import label_maps as lm
from vitjax.data import preprocess
from vitjax.errors import UserError
from vitjax.models.lvvit import LVViT
from vitjax.tasks import get_task
from vitjax.tasks.token_labeling import dense_targets_from_scores, teacher_score_map
from vitjax.tools import label_maps as tool
from vitjax.tools.probe import load_run


def _map():
  """[2, 4, 4, 1]: value 10 y + x at cell (y, x); the second map negated."""
  m = (10 * np.arange(4)[:, None] + np.arange(4)[None, :]).astype(np.float32)
  return np.stack([m, -m])[..., None]


def test_crop_score_map_hand_computed():
  maps = _map()
  full = np.array([[0, 0, 1, 1]] * 2, np.float32)
  no = np.zeros(2, bool)
  np.testing.assert_allclose(lm.crop_score_map(maps, full, no, (4, 4)), maps, atol=1e-6)
  # A grid that divides the map: mean pooling of 2x2 cells.
  pooled = maps.reshape(2, 2, 2, 2, 2, 1).mean((2, 4))
  np.testing.assert_allclose(lm.crop_score_map(maps, full, no, (2, 2)), pooled, atol=1e-5)
  # The left half of the image on a 2x2 grid, the second example flipped.
  left = np.array([[0, 0, 1, 0.5]] * 2, np.float32)
  got = np.asarray(lm.crop_score_map(maps, left, np.array([False, True]), (2, 2)))[..., 0]
  np.testing.assert_allclose(got[0], [[5, 6], [25, 26]], atol=1e-5)
  np.testing.assert_allclose(got[1], [[-6, -5], [-26, -25]], atol=1e-5)
  # A box reaching into the padding above the image (random crop): the top
  # output row lies wholly above row 0 and takes the border row; a box
  # starting mid-cell averages the cells it overlaps by area.
  up = np.array([[-0.25, 0, 0.75, 1], [0.125, 0, 1.125, 1]], np.float32)
  got = np.asarray(lm.crop_score_map(maps, up, no, (4, 4)))[..., 0]
  np.testing.assert_allclose(got[0, :, 0], [0, 0, 10, 20], atol=1e-5)
  np.testing.assert_allclose(got[1, :, 0], [-5, -15, -25, -30], atol=1e-5)


def test_dense_from_topk_is_softmax_renormalised_to_topk():
  rng = np.random.RandomState(0)
  logits = rng.randn(2, 3, 3, 7).astype(np.float32)
  values, indices = jax.lax.top_k(jnp.asarray(logits), 3)
  got = lm.dense_from_topk(values, indices, 7, temperature=2.0)
  want = dense_targets_from_scores(logits, (3, 3), temperature=2.0, topk=3)
  np.testing.assert_allclose(np.asarray(got).reshape(2, 9, 7), want, atol=1e-6)


def test_pipeline_geometry_locates_the_crop():
  """Each train image is the whole image cut at its reported box (and flipped)."""
  config = default_config()
  config.input.image_size = 8  # the digits' own size: no resampling
  config.input.train_augment = "random_crop"
  config.input.crop_padding = 2
  config.input.flip = True
  config.input.mean = config.input.std = (0.0, 0.0, 0.0)
  config.input.std = (1.0, 1.0, 1.0)
  config.input.return_geometry = True
  config.batch_size = 64
  batch = next(data_lib.train_iterator(config))
  assert {"index", "crop_box", "flipped"} <= set(batch)
  assert batch["flipped"].any() and not batch["flipped"].all()
  images, _ = data_lib.digits.load_split("train")
  whole = np.repeat(np.asarray(images)[batch["index"]], 3, -1)
  # Cut by the box on the 8x8 grid (exact: the box moves by whole pixels);
  # compare where the crop lies inside the image (outside: zero padding in the
  # image, the border cell in a score map).
  cut = np.asarray(lm.crop_score_map(whole, batch["crop_box"], batch["flipped"], (8, 8)))
  for i in range(len(cut)):
    y0, x0 = np.round(batch["crop_box"][i, :2] * 8).astype(int)
    rows = [r for r in range(8) if 0 <= r + y0 < 8]
    cols = [c for c in range(8) if 0 <= c + x0 < 8]
    cols = [7 - c for c in cols] if batch["flipped"][i] else cols
    np.testing.assert_allclose(batch["image"][i][np.ix_(rows, cols)],
                               cut[i][np.ix_(rows, cols)], atol=1e-6)
  # Without return_geometry: the same images, no extra keys.
  config.input.return_geometry = False
  plain = next(data_lib.train_iterator(config))
  assert set(plain) == {"image", "label"}
  np.testing.assert_array_equal(plain["image"], batch["image"])


TEACHER = ("model.patch_size=2",)  # 16 px / patch 2: an 8x8 score map


@pytest.mark.slow
def test_label_maps_written_and_used_for_training(tmp_path):
  teacher_dir, maps_dir = str(tmp_path / "teacher"), str(tmp_path / "maps")
  run_main(teacher_dir, *FAST, *TEACHER, "total_steps=2", "model.head_zero_init=False")
  meta = tool.write_label_maps(teacher_dir, maps_dir, topk=3, dtype="float32")
  assert meta["grid"] == [8, 8] and meta["num_examples"] == 1437 and meta["num_classes"] == 10

  # The stored top-3 logits are the teacher's own scores of the whole images.
  config, model, variables = load_run(teacher_dir)
  images, labels = data_lib.digits.load_split("train")
  prep = data_lib.input_pipeline._preprocessing(config)  # pylint: disable=protected-access
  x = np.stack([preprocess.whole_image(tf.constant(images[i]), prep).numpy() for i in (0, 9)])
  scores = teacher_score_map(model.apply(variables, x)[1], variables, model)
  maps = lm.LabelMaps(maps_dir)
  stored = maps.lookup(np.array([0, 9]))
  want_v, want_i = jax.lax.top_k(scores, 3)
  np.testing.assert_allclose(stored["label_map_values"], want_v, atol=1e-5)
  np.testing.assert_array_equal(stored["label_map_indices"], want_i)

  # The task's targets from the file, uncropped, on the teacher's grid equal
  # the on-the-fly teacher's; on a coarser grid, their 2x2 means
  # (probabilities pooled, where the on-the-fly path pools logits).
  cfg = default_config()
  cfg.task = "token_labeling"
  cfg.input.return_geometry = True
  cfg.task_kwargs = ml_collections.ConfigDict(dict(label_maps=maps_dir))
  info = ml_collections.ConfigDict(dict(num_classes=10, num_train_examples=1437))
  task = get_task("token_labeling")(cfg, info, LVViT(num_classes=10, image_size=16,
                                                     patch_size=4, stem_dim=8, hidden_size=16,
                                                     depth=1, num_heads=2))
  batch = dict(stored, crop_box=np.array([[0, 0, 1, 1]] * 2, np.float32),
               flipped=np.zeros(2, bool))
  want = dense_targets_from_scores(scores, (8, 8), topk=3)
  np.testing.assert_allclose(task.dense_targets(None, None, (8, 8), batch), want, atol=1e-5)
  pooled = np.asarray(want).reshape(2, 4, 2, 4, 2, 10).mean((2, 4)).reshape(2, 16, 10)
  np.testing.assert_allclose(task.dense_targets(None, None, (4, 4), batch), pooled, atol=1e-5)

  # Refusals: no geometry, maps of another dataset size, both sources at once.
  cfg.input.return_geometry = False
  with pytest.raises(UserError, match="return_geometry"):
    get_task("token_labeling")(cfg, info, task.model)
  cfg.input.return_geometry = True
  with pytest.raises(UserError, match="1437 train examples"):
    get_task("token_labeling")(cfg, ml_collections.ConfigDict(
        dict(num_classes=10, num_train_examples=100)), task.model)

  # Training from the file through the command line.
  student = str(tmp_path / "student")
  p = run_main(student, "total_steps=3", "progress_bar=False", "batch_size=32",
               "eval_batch_size=40", "input.return_geometry=True",
               f"task_kwargs.label_maps={maps_dir}", config="configs/lvvit_digits.py")
  with open(os.path.join(student, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  dense = [r["train/loss_dense"] for r in rows if "train/loss_dense" in r]
  assert dense and np.isfinite(dense).all(), p.stderr[-2000:]
