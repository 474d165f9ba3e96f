"""Detection with DETR's protocol (task_kwargs.resize='detr'): HF end-to-end
parity on real photographs, a COCO folder of mixed sizes trained and scored,
and the folder source's bad-input handling.

Parity: photographs of different sizes and aspect ratios (scikit-learn's two
sample JPEGs, crops and rescales) batched together go through HF's own
`DetrImageProcessorPil` / `DeformableDetrImageProcessorPil` (the PIL backend:
this environment has no torchvision for the torchvision-backed
`DetrImageProcessor`; both resize with the same sizes) + the HF model +
`post_process_object_detection(target_sizes=...)`, and through vitjax's COCO
folder source + eval pipeline + the converted model + `DetectionTask`'s
eval outputs mapped to original pixels: the same detections per image (boxes
within 0.5 pixel, scores 1e-4). Two canvases: HF's batch maximum, and a fixed
pad_size larger than every image.
"""

import json
import os
import warnings

import jax
import numpy as np
import pytest

from vitjax.data import detection as dd
from vitjax.errors import UserError
from vitjax.tasks import detection as det

SIZE = dict(shortest_edge=96, longest_edge=160)


def _photos():
  """Four RGB uint8 photos: landscape, portrait, small, very wide (max_size caps it)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from sklearn.datasets import load_sample_images  # pylint: disable=g-import-not-at-top
  china, flower = load_sample_images().images  # 427 x 640 each
  small = np.asarray(Image.fromarray(china).resize((160, 200), Image.BILINEAR))
  return [china[:300, 50:500], flower[:, 170:470], small, china[100:250]]


def _write_coco(directory, split, images, boxes, classes, num_classes):
  """A COCO folder (boxes only) of uint8 images and per-image xyxy boxes / 1-based classes."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  os.makedirs(os.path.join(directory, split), exist_ok=True)
  os.makedirs(os.path.join(directory, "annotations"), exist_ok=True)
  imgs, anns = [], []
  for i, (im, bx, cl) in enumerate(zip(images, boxes, classes)):
    name = f"{i:04d}.png"
    Image.fromarray(im).save(os.path.join(directory, split, name))
    imgs.append(dict(id=i + 1, file_name=name, height=im.shape[0], width=im.shape[1]))
    for b, c in zip(bx, cl):
      anns.append(dict(id=len(anns) + 1, image_id=i + 1, category_id=int(c), iscrowd=0,
                       bbox=[b[0], b[1], b[2] - b[0], b[3] - b[1]]))
  cats = [dict(id=k + 1, name=f"c{k}") for k in range(num_classes)]
  with open(os.path.join(directory, "annotations", f"instances_{split}.json"), "w") as f:
    json.dump(dict(images=imgs, annotations=anns, categories=cats), f)


def _config(directory, num_queries, class_loss, canvas, **kw):
  from vitjax.config import default_config  # pylint: disable=g-import-not-at-top
  c = default_config()
  c.task = "detection"
  c.dataset.name = f"coco_dir:{directory}"
  c.dataset.train_split = c.dataset.eval_split = "val"
  c.input.mean, c.input.std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
  c.model = {"num_queries": num_queries}
  c.eval_batch_size = 3
  c.task_kwargs.update(resize="detr", min_size=SIZE["shortest_edge"],
                       max_size=SIZE["longest_edge"], class_loss=class_loss, **kw)
  if canvas is not None:
    c.task_kwargs.canvas = canvas
  return c


def _hf_detr(torch, transformers):
  from oracle import redraw  # pylint: disable=g-import-not-at-top
  from vitjax.convert.detr import hf_detr_to_vitjax  # pylint: disable=g-import-not-at-top
  from vitjax.models.detr import DETR  # pylint: disable=g-import-not-at-top
  cfg = transformers.DetrConfig(
      backbone_config=transformers.ResNetConfig(
          embedding_size=8, hidden_sizes=[8, 16, 24], depths=[1, 1, 1], layer_type="basic",
          out_features=["stage3"]),
      use_timm_backbone=False, use_pretrained_backbone=False, d_model=16, encoder_layers=2,
      decoder_layers=2, encoder_ffn_dim=24, decoder_ffn_dim=24, encoder_attention_heads=2,
      decoder_attention_heads=2, num_labels=3, num_queries=6, auxiliary_loss=False)
  ref = transformers.DetrForObjectDetection(cfg).eval()
  redraw(ref, 0, is_norm=lambda name: True, tensors="state_dict")
  cv = hf_detr_to_vitjax(ref.state_dict(), config=cfg)
  from transformers.models.detr.image_processing_pil_detr import DetrImageProcessorPil  # pylint: disable=g-import-not-at-top
  return ref, DETR(**cv.model_kwargs), cv.variables, DetrImageProcessorPil, "softmax_ce"


def _hf_deformable(torch, transformers):
  from test_deformable_detr import _hf_model  # pylint: disable=g-import-not-at-top
  from vitjax.convert.deformable_detr import hf_deformable_detr_to_vitjax  # pylint: disable=g-import-not-at-top
  from vitjax.models.deformable_detr import DeformableDETR  # pylint: disable=g-import-not-at-top
  ref, cfg = _hf_model(torch, transformers, seed=1, with_box_refine=True, two_stage=True,
                       num_queries=6, two_stage_num_proposals=6, num_feature_levels=4)
  cv = hf_deformable_detr_to_vitjax(ref.state_dict(), config=cfg)
  from transformers.models.deformable_detr.image_processing_pil_deformable_detr import (  # pylint: disable=g-import-not-at-top
      DeformableDetrImageProcessorPil)
  return (ref, DeformableDETR(**cv.model_kwargs), cv.variables,
          DeformableDetrImageProcessorPil, "sigmoid_focal")


@pytest.mark.parametrize("family", ["detr", "deformable_detr"])
@pytest.mark.parametrize("fixed_canvas", [False, True], ids=["batch_max", "pad_size"])
def test_end_to_end_parity_with_hf(torch, transformers, tmp_path, family, fixed_canvas):
  build = _hf_detr if family == "detr" else _hf_deformable
  ref, model, variables, processor_cls, class_loss = build(torch, transformers)
  photos = _photos()
  extra = dict(pad_size=dict(height=176, width=168)) if fixed_canvas else {}
  processor = processor_cls(size=dict(SIZE), **extra)
  inputs = processor(images=photos, return_tensors="pt")
  sizes = [p.shape[:2] for p in photos]
  with torch.no_grad():
    outputs = ref(pixel_values=inputs["pixel_values"], pixel_mask=inputs["pixel_mask"])
  kw = dict(top_k=100) if family != "detr" else {}
  want = processor.post_process_object_detection(outputs, threshold=0.0, target_sizes=sizes,
                                                 **kw)

  boxes = [[[2, 3, 40, 50]]] * len(photos)
  _write_coco(str(tmp_path), "val", photos, boxes, [[1]] * len(photos), 3)
  canvas = tuple(inputs["pixel_values"].shape[-2:])
  c = _config(str(tmp_path), 6, class_loss, canvas)
  task = det.DetectionTask(c, det.DetectionTask.dataset_info(c), model)
  batches = list(task.eval_iterator(c))
  # The pipeline's input equals HF's processor output (the same PIL resize).
  got_px = np.concatenate([b["image"] for b in batches])[:len(photos)]
  got_mask = np.concatenate([b["pixel_mask"] for b in batches])[:len(photos)]
  np.testing.assert_array_equal(got_mask, inputs["pixel_mask"].numpy())
  assert np.abs(got_px - inputs["pixel_values"].numpy().transpose(0, 2, 3, 1)).max() < 1e-5
  step = jax.jit(lambda b: task.eval_outputs(variables["params"], {
      k: v for k, v in variables.items() if k != "params"}, b))
  outs = [jax.tree_util.tree_map(np.asarray, step(b)) for b in batches]
  dets, gts = task.image_results(outs)
  assert len(dets) == len(photos) == len(want)
  worst_box = worst_score = 0.0
  for d, w, (h, wd) in zip(dets, want, sizes):
    order = np.argsort(-w["scores"].numpy(), kind="stable")
    ws, wl, wb = (w[k].numpy()[order] for k in ("scores", "labels", "boxes"))
    assert len(d["scores"]) == len(ws)
    np.testing.assert_array_equal(d["classes"], wl)
    worst_score = max(worst_score, float(np.abs(d["scores"] - ws).max()))
    worst_box = max(worst_box, float(np.abs(d["boxes"] - wb).max()))
  print(f"\n{family} ({'pad_size' if fixed_canvas else 'batch max'}): boxes within "
        f"{worst_box:.2e} px, scores {worst_score:.2e}")
  assert worst_box <= 0.5 and worst_score <= 1e-4, (worst_box, worst_score)
  assert np.allclose(gts[0]["boxes"], [[2, 3, 40, 50]], atol=1e-3)  # ground truth unmoved


def test_resized_shape_matches_hf():
  from transformers.image_transforms import get_size_with_aspect_ratio  # pylint: disable=g-import-not-at-top
  from vitjax.data.detr_protocol import resized_shape  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  for _ in range(200):
    hw = tuple(int(v) for v in rng.integers(1, 2000, 2))
    size, cap = int(rng.integers(1, 900)), [None, int(rng.integers(900, 1400))][rng.integers(2)]
    if cap is not None and size > cap:
      continue
    want = get_size_with_aspect_ratio(hw, size, cap)
    assert tuple(resized_shape(hw, size, cap).numpy()) == tuple(want), (hw, size, cap)


def _shapes_folder(directory, split, n, seed):
  """Shapes images at three sizes (64x64, 48x80, 96x72; boxes scaled with them)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from vitjax.data import shapes  # pylint: disable=g-import-not-at-top
  records = shapes.generate({"val": "validation"}.get(split, split), n, seed, 64, 3, (0.15, 0.3))
  images, boxes, classes = [], [], []
  for i, r in enumerate(records):
    h, w = [(64, 64), (48, 80), (96, 72)][i % 3]
    images.append(np.asarray(Image.fromarray(r["image"]).resize((w, h), Image.BILINEAR)))
    boxes.append([list(np.asarray(b, float) * [w / 64, h / 64, w / 64, h / 64])
                  for b in r["boxes"]])
    classes.append(list(r["classes"]))
  _write_coco(directory, split, images, boxes, classes, 3)


@pytest.mark.slow
def test_coco_folder_of_three_sizes_trains_and_scores(tmp_path):
  from vitjax.train import train_and_evaluate  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "configs"))
  from deformable_detr_shapes import get_config  # pylint: disable=g-import-not-at-top
  data = str(tmp_path / "data")
  _shapes_folder(data, "train", 24, 0)
  _shapes_folder(data, "val", 9, 1)
  c = get_config("tiny")
  c.dataset.name = f"coco_dir:{data}"
  c.dataset.train_split, c.dataset.eval_split = "train", "val"
  for k in ("num_train_images", "num_eval_images", "scale_range"):
    del c.task_kwargs[k]
  c.task_kwargs.update(resize="detr", min_size=64, max_size=96, color_jitter=0.0)
  c.batch_size, c.eval_batch_size, c.total_steps = 4, 6, 3
  c.eval_every_steps = c.checkpoint_every_steps = 3
  b = next(dd.train_iterator(c))
  assert b["image"].shape == (4, 96, 96, 3) and b["pixel_mask"].shape == (4, 96, 96)
  ev = list(dd.eval_iterator(c))
  sizes = {tuple(x) for e in ev for x, m in zip(e["orig_size"], e["mask"]) if m}
  assert sizes == {(64, 64), (48, 80), (96, 72)}
  # Eval ground truth, mapped to original pixels, is the folder's boxes.
  areas = sorted(float(np.prod(bx[2:] * x[::-1])) for e in ev
                 for bx_row, v_row, x, m in zip(e["boxes"], e["box_valid"], e["orig_size"],
                                                e["mask"]) if m for bx in bx_row[v_row])
  with open(os.path.join(data, "annotations", "instances_val.json")) as f:
    want = sorted(a["bbox"][2] * a["bbox"][3] for a in json.load(f)["annotations"])
  np.testing.assert_allclose(areas, want, rtol=1e-4)
  workdir = str(tmp_path / "run")
  train_and_evaluate(c, workdir)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  final = [r for r in rows if "eval/ap" in r]
  assert final and -1 <= final[-1]["eval/ap"] <= 1 and np.isfinite(final[-1]["eval/loss"])


def test_folder_bad_input(tmp_path):
  img = np.zeros((30, 40, 3), np.uint8)
  good = dict(images=[img, img[:20]], boxes=[[[1, 1, 10, 10]], [[5, 5, 20, 15]]],
              classes=[[1], [2]])

  def folder(name, edit=None, **over):
    d = str(tmp_path / name)
    spec = dict(good, **over)
    _write_coco(d, "val", spec["images"], spec["boxes"], spec["classes"], 3)
    path = os.path.join(d, "annotations", "instances_val.json")
    if edit:
      with open(path) as f:
        js = json.load(f)
      edit(js)
      with open(path, "w") as f:
        json.dump(js, f)
    return d

  def source(d):
    c = _config(d, 6, "softmax_ce", None)
    return dd.make_source(c)

  # An annotation naming an image id that is not in the JSON; a missing file.
  d = folder("orphan", lambda js: js["annotations"].append(
      dict(id=99, image_id=7, category_id=1, bbox=[0, 0, 2, 2])))
  with pytest.raises(UserError, match="annotation 99 names image_id 7"):
    source(d)
  d = folder("missing")
  os.remove(os.path.join(d, "val", "0001.png"))
  before = sorted(os.listdir(d))
  with pytest.raises(UserError, match=r"1 image file\(s\) that do not exist.*0001.png"):
    source(d)
  assert sorted(os.listdir(d)) == before  # nothing written
  # A class id above num_classes (a category_id not among the categories).
  d = folder("badclass", classes=[[1], [4]])
  with pytest.raises(UserError, match="category_id 4, not one of the 3 categories"):
    source(d)
  # Boxes outside the image: clipped, or dropped when nothing is left; counted.
  d = folder("outside", boxes=[[[-5, 2, 10, 40], [50, 50, 60, 60]], [[5, 5, 20, 15]]],
             classes=[[1, 2], [2]])
  with pytest.warns(UserWarning, match=r"1 box\(es\) clipped.*1 box\(es\) with no area"):
    src = source(d)
  targets = src.eval_data[1]
  np.testing.assert_allclose(targets[0, 0], [0, 2 / 30, 10 / 40, 1, 0], atol=1e-6)
  assert (targets[0, 1:, 4] < 0).all()
  # A JSON size that is not the file's.
  d = folder("size", lambda js: js["images"][0].update(height=31))
  with pytest.raises(UserError, match="is 40x30 but"):
    source(d)
  # Nothing bad: images of two sizes load, no warning.
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    src = source(folder("fine"))
  assert src.info.num_classes == 3 and src.info.num_eval_examples == 2


def test_square_protocol_unchanged_and_bad_settings():
  from test_detection import _config as shapes_config  # pylint: disable=g-import-not-at-top
  b = next(dd.train_iterator(shapes_config()))
  assert "pixel_mask" not in b and b["image"].shape == (4, 32, 32, 3)
  with pytest.raises(UserError, match="resize='letterbox'"):
    dd.eval_iterator(shapes_config(resize="letterbox"))
  with pytest.raises(UserError, match="canvas"):
    next(dd.eval_iterator(shapes_config(resize="detr", min_size=32, max_size=48,
                                        canvas=(24, 48))))


def test_too_many_objects_is_a_user_error():
  from test_detection import _config as shapes_config  # pylint: disable=g-import-not-at-top
  from vitjax.data import detr_protocol  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  opts = dd._settings(shapes_config(resize="detr", min_size=32, max_size=48))  # pylint: disable=protected-access
  targets = np.tile(np.array([[0.1, 0.1, 0.5, 0.5, 1]], np.float32), (opts["max_boxes"] + 1, 1))
  with pytest.raises(tf.errors.InvalidArgumentError, match="more objects than max_boxes"):
    detr_protocol.eval_example(tf.zeros([32, 32, 3], tf.uint8), tf.constant(targets), opts)
