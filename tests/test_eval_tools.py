"""vitjax.tools.evaluate and vitjax.tools.predict: no training, a run's or a checkpoint's model.

A tiny ViT trained 4 steps on the digits: evaluate reproduces the run's own
final evaluation and appends it to metrics.jsonl (earlier records untouched),
also from the command line with a --config override and from the run exported
as a Hugging Face snapshot; predict prints the top-k class names for image
files written with PIL, draws masks for a segmentation run, and refuses
unreadable images.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, tiny_digits_config
from vitjax.errors import UserError
from vitjax.metric_writer import read_metrics
from vitjax.tools import evaluate, predict
from vitjax.train import train_and_evaluate


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  c = tiny_digits_config(seed=3)
  wd = str(tmp_path_factory.mktemp("run"))
  final = train_and_evaluate(c, wd)
  return wd, final


def _images(tmp_path):
  rng = np.random.default_rng(0)
  a = tmp_path / "a.png"
  Image.fromarray(rng.integers(0, 255, (20, 12, 3), np.uint8)).save(a)
  b = tmp_path / "b.jpg"
  Image.fromarray(rng.integers(0, 255, (9, 9), np.uint8), "L").save(b)
  return [str(a), str(b)]


def test_evaluate_reproduces_the_runs_evaluation(run_dir):
  wd, final = run_dir
  before = read_metrics(wd)
  metrics = evaluate.run(workdir=wd)
  assert metrics["accuracy"] == pytest.approx(final["eval/accuracy"], abs=1e-6)
  after = read_metrics(wd)
  assert after[:-1] == before
  assert after[-1]["step"] == 4
  assert after[-1]["evaluate/accuracy"] == pytest.approx(metrics["accuracy"])


@pytest.mark.slow  # two fresh interpreters (jax + TensorFlow imports): ~30 s
def test_evaluate_command_line_with_an_override(run_dir, tmp_path):
  wd, final = run_dir
  env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
  p = subprocess.run([sys.executable, "-m", "vitjax.tools.evaluate", f"--workdir={wd}",
                      "--config.eval_batch_size=40", f"--out={tmp_path}"],
                     cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert p.returncode == 0, p.stderr[-3000:]
  printed = json.loads(p.stdout.strip().splitlines()[-1])
  assert printed["accuracy"] == pytest.approx(final["eval/accuracy"], abs=1e-6)
  assert read_metrics(str(tmp_path))[-1]["evaluate/accuracy"] == printed["accuracy"]
  p = subprocess.run([sys.executable, "-m", "vitjax.tools.evaluate", f"--workdir={wd}",
                      "--config.no_such_field=1"], cwd=ROOT, env=env, capture_output=True,
                     text=True, timeout=300)
  assert p.returncode != 0 and "vitjax error" in p.stderr and "no_such_field" in p.stderr


def test_export_command_line(run_dir, tmp_path):
  from vitjax.tools import export  # pylint: disable=g-import-not-at-top
  wd, _ = run_dir
  export.main([f"--workdir={wd}", f"--out={tmp_path / 'hf'}"])
  cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
  assert cfg["model_type"] == "vit" and (tmp_path / "hf" / "model.safetensors").is_file()
  with pytest.raises(SystemExit) as e:
    export.main([f"--workdir={wd}", f"--out={wd}"])  # would overwrite the run's config.json
  assert e.value.code == 2


def test_evaluate_an_exported_snapshot(run_dir, tmp_path, torch, transformers):
  """The run -> HF snapshot -> evaluate --checkpoint: the same accuracy."""
  pytest.importorskip("vitjax.convert.pretrained")
  from vitjax.convert import export_hf  # pylint: disable=g-import-not-at-top
  wd, final = run_dir
  snap = export_hf(wd, str(tmp_path / "snapshot"))
  cfg = json.loads(open(os.path.join(snap, "config.json")).read())
  assert cfg["model_type"] == "vit" and len(cfg["id2label"]) == 10
  assert os.path.isfile(os.path.join(snap, "preprocessor_config.json"))
  metrics = evaluate.run(workdir=wd, checkpoint=snap, out=str(tmp_path / "eval"))
  assert metrics["accuracy"] == pytest.approx(final["eval/accuracy"], abs=1e-6)
  with pytest.raises(UserError, match="holds a vitjax run"):
    export_hf(wd, wd)
  with pytest.raises(UserError, match="--out"):
    evaluate.run(checkpoint=snap, config_spec=os.path.join(ROOT, "configs", "quickstart.py"))


def test_predict_prints_topk_class_names(run_dir, tmp_path, capsys):
  wd, _ = run_dir
  images = _images(tmp_path)
  top = predict.run(wd, images, topk=3)
  assert len(top) == 2 and all(len(t) == 3 for t in top)
  digits = {str(i) for i in range(10)}
  for t in top:
    names, probs = zip(*t)
    assert set(names) <= digits | {f"class_{i}" for i in range(10)}
    assert list(probs) == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
  predict.main([f"--workdir={wd}", "--images", *images, "--topk", "2"])
  lines = capsys.readouterr().out.strip().splitlines()
  assert lines[0].startswith(images[0] + ": " + top[0][0][0])
  bad = tmp_path / "not_an_image.png"
  bad.write_text("hello")
  with pytest.raises(UserError, match="could not be read as an image"):
    predict.run(wd, [str(bad)])


def test_predict_draws_masks_for_a_segmentation_run(tmp_path):
  import importlib.util  # pylint: disable=g-import-not-at-top
  from vitjax import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from vitjax import runs  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location(
      "segformer_shapes", os.path.join(ROOT, "configs", "segformer_shapes.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config("tiny")
  c.input.image_size = 32
  wd = tmp_path / "seg"
  wd.mkdir()
  (wd / "config.json").write_text(json.dumps(c.to_dict()))
  variables = runs.load_run(str(wd), random_init=True).variables
  params = variables.pop("params")
  saver = ckpt_lib.Checkpointer(str(wd))
  saver.save(1, {"params": params, "model_state": variables}, force=True)
  saver.wait()
  saver.close()
  images = _images(tmp_path)
  with pytest.raises(UserError, match="--out"):
    predict.run(str(wd), images)
  paths = predict.run(str(wd), images, out=str(tmp_path / "pictures"))
  assert [os.path.basename(p) for p in paths] == ["a.png", "b.png"]
  assert np.asarray(Image.open(paths[0])).shape == (256, 512, 3)  # image | overlay, 8x
