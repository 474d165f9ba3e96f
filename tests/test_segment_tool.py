"""vitjax.tools.segment: colour overlays of predicted masks, written as PNGs."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from vitjax.tools import segment


def test_overlay_colours_only_labelled_pixels():
  image = np.full((4, 4, 3), 100, np.uint8)
  labels = np.zeros((4, 4), np.int32)
  labels[:2] = 1
  out = segment.overlay(image, labels)
  assert (out[2:] == 100).all()  # background untouched
  assert not (out[:2] == 100).all(axis=-1).any()  # class 1 coloured
  assert out.dtype == np.uint8


def _workdir(tmp_path, config_name):
  import importlib.util  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  path = os.path.join(root, "configs", f"{config_name}_shapes.py")
  spec = importlib.util.spec_from_file_location(config_name, path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config("tiny")
  c.input.image_size = 32
  d = tmp_path / config_name
  d.mkdir()
  (d / "config.json").write_text(json.dumps(c.to_dict()))
  return str(d)


@pytest.mark.parametrize("name,mode", [("maskformer", "panoptic"), ("segformer", "semantic")])
@pytest.mark.slow
def test_writes_overlay_png(tmp_path, name, mode):
  wd = _workdir(tmp_path, name)
  paths = segment.run(wd, str(tmp_path / "out"), split="test", num=2, mode=mode, display=64,
                      random_init=True)
  assert [os.path.basename(p) for p in paths] == ["test_0.png", "test_1.png"]
  img = np.asarray(Image.open(paths[0]))
  assert img.shape == (64, 192, 3)  # image | prediction | truth, enlarged 2x
  original, truth = img[:, :64], img[:, 128:]
  assert (original != truth).any()  # the true objects are drawn in colour


def test_refuses_other_tasks(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps({"task": "classification"}))
  from vitjax.errors import UserError  # pylint: disable=g-import-not-at-top
  with pytest.raises(UserError, match="segment draws"):
    segment.run(str(tmp_path), str(tmp_path / "o"))
