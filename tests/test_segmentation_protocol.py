"""Segmentation evaluated as mmseg / HF do: original label sizes, whole image and sliding window.

- HF parity on real photographs (scikit-learn's two JPEGs, crops, rescales and a
  transpose: six sizes, batched together): SegformerImageProcessor + a tiny random
  SegformerForSemanticSegmentation + post_process_semantic_segmentation(target_sizes)
  vs vitjax's folder source + eval pipeline + the converted model give the same label
  map on >= 99.9% of pixels (square resize, HF's default; and shortest-edge resize).
- Sliding windows: a per-pixel linear "model" (its logits are exact at every pixel)
  makes slide == whole when one window covers the image, and slide == a hand-computed
  overlap average on an image larger than the crop, windows placed as mmseg places them.
- The folder source: three image sizes, reduce_zero_label, bad pairs refused or
  skipped and counted, nothing written; SegFormer trains on it with vitjax.main and
  evaluates mIoU on the original-size label maps.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from conftest import run_main
from oracle import randomize
from vitjax.config import default_config
from vitjax.data import dense, dense_eval, seg_folder, shapes
from vitjax.errors import UserError
from vitjax.tasks import get_task, seg_inference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # HF's (ImageNet) defaults


def _photos():
  """Real photographs of six sizes (two orientations, sides that divide nothing)."""
  from sklearn.datasets import load_sample_images  # pylint: disable=g-import-not-at-top
  china, flower = load_sample_images().images  # 427 x 640 each
  small = np.asarray(Image.fromarray(flower).resize((131, 97), Image.BILINEAR))
  return [china, flower.transpose(1, 0, 2).copy(), china[50:350, 100:550].copy(),
          small, flower[13:213, 7:307].copy(),
          np.asarray(Image.fromarray(china).resize((600, 400), Image.BILINEAR))]


def _write_folder(root, split, images, labels):
  for d in ("images", "annotations"):
    os.makedirs(os.path.join(root, d, split), exist_ok=True)
  for i, (im, lab) in enumerate(zip(images, labels)):
    Image.fromarray(im).save(os.path.join(root, "images", split, f"{i:03d}.png"))
    Image.fromarray(lab.astype(np.uint8)).save(os.path.join(root, "annotations", split,
                                                            f"{i:03d}.png"))


def _config(root, size, **kw):
  c = default_config()
  c.task = "segmentation"
  c.dataset.name = f"folder:{root}"
  c.dataset.train_split, c.dataset.eval_split = "training", "validation"
  c.input.image_size = size
  c.input.mean, c.input.std = MEAN, STD
  c.eval_batch_size = 8
  c.task_kwargs.num_classes = 5
  c.task_kwargs.update(kw)
  return c


def _vitjax_maps(config, model, variables, info):
  """Label maps at the original sizes through the task's eval pipeline."""
  task = get_task("segmentation")(config, info, model)
  logits = jax.jit(lambda b: task.eval_logits(variables["params"],
                                              {"batch_stats": variables["batch_stats"]}, b))
  maps = []
  for batch in task.eval_iterator(config):
    pred = np.asarray(jnp.argmax(logits(batch), -1))
    for i in np.flatnonzero(batch["mask"]):
      h, w = batch["label_size"][i]
      maps.append(pred[i, :h, :w])
  return maps


@pytest.mark.parametrize("resize", ["square", "short_side"])
def test_hf_parity_on_photographs(tmp_path, torch, transformers, resize):
  from vitjax.convert.segformer import hf_segformer_to_vitjax  # pylint: disable=g-import-not-at-top
  from vitjax.models.segformer import SegFormer  # pylint: disable=g-import-not-at-top
  photos = _photos()
  if resize == "short_side":  # 2:3 photos: the shorter side 64 gives 64 x 96 (SegFormer's /32)
    # (Landscape and portrait photos in one split would share a 96 x 96 canvas: the
    # padded images then differ from HF's unpadded ones, as mmseg's padding does.)
    photos = [p for p in photos if p.shape[0] * 3 == p.shape[1] * 2]
    hf_size = {"shortest_edge": 64}
  else:
    hf_size = {"height": 64, "width": 64}
  assert len({p.shape for p in photos}) == len(photos) >= 3
  root = str(tmp_path)
  zeros = [np.zeros(p.shape[:2], np.uint8) for p in photos]
  _write_folder(root, "validation", photos, zeros)
  _write_folder(root, "training", photos[:1], zeros[:1])

  cfg = transformers.SegformerConfig(num_labels=5, hidden_sizes=[8, 16, 24, 32],
                                     depths=[1, 1, 1, 1], num_attention_heads=[1, 2, 3, 4],
                                     decoder_hidden_size=16)
  ref = randomize(transformers.SegformerForSemanticSegmentation(cfg), wide=("classifier",),
                  bn_mean_std=0.1)
  processor = transformers.SegformerImageProcessor(size=hf_size)
  # Calibrate the decoder's BatchNorm on the photos (unit variance, no affine) so that
  # the random model's label map follows the image (re-drawn weights alone give logits
  # that hardly vary over the image: one class everywhere, a test that cannot fail).
  bn = ref.decode_head.batch_norm
  bn.reset_running_stats()
  bn.momentum = None  # the running statistics are the calibration batch's
  with torch.no_grad():
    bn.weight.fill_(1.0)
    bn.bias.zero_()
    ref.decode_head.classifier.weight.normal_(0.0, 2.0)
    ref.decode_head.classifier.bias.zero_()
    ref.train()(**processor(images=[Image.fromarray(p) for p in photos[:2]],
                            size={"height": 64, "width": 64}, return_tensors="pt"))
  ref.eval()
  want = []
  for p in photos:  # one at a time: HF's shortest_edge sizes differ between photos
    inputs = processor(images=[Image.fromarray(p)], return_tensors="pt")
    with torch.no_grad():
      out = ref(**inputs)
    want.append(processor.post_process_semantic_segmentation(
        out, target_sizes=[p.shape[:2]])[0].numpy())

  cv = hf_segformer_to_vitjax(ref.state_dict(), cfg.to_dict())
  config = _config(root, 64, eval_resize=resize)
  info = dense.get_dataset_info(config)
  got = _vitjax_maps(config, SegFormer(**cv.model_kwargs), cv.variables, info)
  agree = [np.mean(g == w) for g, w in zip(got, want)]
  assert [g.shape for g in got] == [p.shape[:2] for p in photos]
  counts = [np.bincount(w.ravel(), minlength=5) / w.size for w in want]
  assert all(c.max() < 0.95 and (c > 0.01).sum() >= 2 for c in counts), counts  # not trivial
  assert min(agree) >= 0.999, agree


# ---------------------------------------------------------------------------
# Sliding windows.

W_LINEAR = np.array([[1.0, -2.0, 0.5], [0.3, 1.0, -1.0], [-0.7, 0.2, 2.0], [0.0, 0.5, 0.1]],
                    np.float32).T  # [3 channels, 4 classes]


def linear(x):
  """A per-pixel linear map: logits at the input's resolution, position-independent."""
  return x @ jnp.asarray(W_LINEAR)


def _image_batch(h, w, canvas, seed=0):
  rng = np.random.default_rng(seed)
  images = np.zeros((1,) + tuple(canvas) + (3,), np.float32)
  images[0, :h, :w] = rng.normal(size=(h, w, 3))
  return jnp.asarray(images), jnp.array([[h, w]], jnp.int32)


def test_slide_equals_whole_when_one_window_covers_the_image():
  images, size = _image_batch(40, 56, (64, 64))
  labels = jnp.array([[40, 56]], jnp.int32)
  whole = seg_inference.whole(linear, images, size, labels, (40, 56))
  slide = seg_inference.slide(linear, images, size, labels, (40, 56), (64, 64), (32, 32))
  np.testing.assert_allclose(slide, whole, atol=1e-6)
  np.testing.assert_allclose(whole[0], np.asarray(images[0, :40, :56]) @ W_LINEAR, atol=1e-5)


def _hand_slide(image, crop, stride, scale_of_window):
  """mmseg's slide_inference, written out in numpy (scale_of_window: a per-window gain)."""
  h, w = image.shape[:2]
  (ch, cw), (sh, sw) = crop, stride
  preds, count = np.zeros((h, w, 4)), np.zeros((h, w, 1))
  nh, nw = max(h - ch + sh - 1, 0) // sh + 1, max(w - cw + sw - 1, 0) // sw + 1
  windows = []
  for i in range(nh):
    for j in range(nw):
      y2, x2 = min(i * sh + ch, h), min(j * sw + cw, w)
      y1, x1 = max(y2 - ch, 0), max(x2 - cw, 0)
      windows.append((y1, x1))
      gain = scale_of_window(y1, x1)
      preds[y1:y2, x1:x2] += gain * (image[y1:y2, x1:x2] @ W_LINEAR)
      count[y1:y2, x1:x2] += 1
  return preds / count, windows


def test_slide_matches_a_hand_computed_overlap_average():
  # 70 x 90 image, crop 32 x 48, stride 20 x 30: 3 x 3 windows; the last row and column
  # of windows are moved back to end at the image's edge (y1 = 38, x1 = 42), so overlaps
  # are uneven. Each window's logits get a gain that depends on where the window is, so
  # a window put in the wrong place, or counted wrongly, changes the average.
  h, w, crop, stride = 70, 90, (32, 48), (20, 30)
  images, size = _image_batch(h, w, (96, 96), seed=1)

  def windowed(x):  # the gain is read back from the crop itself: its top-left pixel
    return linear(x) * (1.0 + jnp.abs(x[:, :1, :1, :1]))

  got = seg_inference.slide(windowed, images, size, size, (h, w), crop, stride)
  image = np.asarray(images[0, :h, :w], np.float64)
  want, windows = _hand_slide(image, crop, stride,
                              lambda y, x: 1.0 + abs(image[y, x, 0]))
  assert windows == [(y, x) for y in (0, 20, 38) for x in (0, 30, 42)]
  np.testing.assert_allclose(np.asarray(got[0]), want, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------
# The folder source.

def _shapes_folder(root, split, sizes, seed):
  """Shapes images of several sizes (labels: class ids) written as JPEG + PNG."""
  for d in ("images", "annotations"):
    os.makedirs(os.path.join(root, d, split), exist_ok=True)
  k = 0
  for size, n in sizes:
    for r in shapes.generate(split if split != "training" else "train", n, seed, size):
      Image.fromarray(r["image"]).save(os.path.join(root, "images", split, f"{k:03d}.jpg"),
                                       quality=95)
      Image.fromarray(r["semantic_mask"].astype(np.uint8)).save(
          os.path.join(root, "annotations", split, f"{k:03d}.png"))
      k += 1


def test_folder_source_sizes_reduce_and_bad_pairs(tmp_path, caplog):
  root = str(tmp_path)
  _shapes_folder(root, "training", [(32, 2)], 0)
  _shapes_folder(root, "validation", [(32, 1), (48, 1), (40, 1)], 1)
  c = _config(root, 32, num_classes=4)
  info = dense.get_dataset_info(c)
  assert (info.num_train_examples, info.num_eval_examples, info.num_classes) == (2, 3, 4)
  batch = next(dense_eval.eval_iterator(c))
  assert batch["label"].shape == (8, 48, 48) and batch["image"].shape == (8, 32, 32, 3)
  assert batch["label_size"][:3].tolist() == [[32, 32], [48, 48], [40, 40]]
  assert (batch["label"][0, 32:] == 255).all()  # padding of the smaller label maps
  truth = seg_folder.read_label(os.path.join(root, "annotations", "validation", "001.png"))
  np.testing.assert_array_equal(batch["label"][1], truth)
  # reduce_zero_label: 0 -> 255, v -> v - 1 (HF's do_reduce_labels / mmseg)
  c5 = _config(root, 32, num_classes=3, reduce_zero_label=True)
  reduced = next(dense_eval.eval_iterator(c5))["label"][1]
  np.testing.assert_array_equal(reduced, np.where(truth == 0, 255, truth - 1))
  np.testing.assert_array_equal(seg_folder.reduce_zero_label(np.array([0, 1, 5, 255]), 255),
                                [255, 0, 4, 255])

  before = {p: os.path.getmtime(p) for p in _all_files(root)}
  bad = os.path.join(root, "annotations", "validation", "001.png")
  Image.fromarray(np.zeros((48, 40), np.uint8)).save(bad)  # another size than its image
  seg_folder._CACHE.clear()  # pylint: disable=protected-access
  with pytest.raises(UserError, match="label map must have its image's size"):
    dense.get_dataset_info(c)
  Image.fromarray(np.full((48, 48), 7, np.uint8)).save(bad)  # a class id above num_classes
  seg_folder._CACHE.clear()  # pylint: disable=protected-access
  with pytest.raises(UserError, match="holds id 7.*bad_labels='skip'"):
    dense.get_dataset_info(c)
  os.remove(os.path.join(root, "images", "validation", "002.jpg"))  # an unpaired label PNG
  seg_folder._CACHE.clear()  # pylint: disable=protected-access
  skip = _config(root, 32, num_classes=4, bad_labels="skip")
  with caplog.at_level("WARNING"):
    assert dense.get_dataset_info(skip).num_eval_examples == 1
  assert "2 of 3 pairs left out" in caplog.text
  assert sum(int(b["mask"].sum()) for b in dense_eval.eval_iterator(skip)) == 1
  after = {p: os.path.getmtime(p) for p in _all_files(root)}
  assert set(after) <= set(before)  # nothing written (only the files this test changed)
  with pytest.raises(UserError, match="num_classes"):
    dense.get_dataset_info(_config(root, 32, num_classes=None))
  with pytest.raises(UserError, match="no images in"):
    dense.get_dataset_info(_config(str(tmp_path / "nowhere"), 32))


def _all_files(root):
  return [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs]


def test_resize_rules_match_the_references():
  from transformers.image_transforms import get_size_with_aspect_ratio  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  p = dense_eval.protocol(_config("/x", 64, eval_resize="short_side", eval_short_side=512,
                                  eval_long_side=1333))
  m = dense_eval.protocol(_config("/x", 64, eval_resize="mmseg", eval_short_side=512,
                                  eval_long_side=2048))
  for hw in [(427, 640), (640, 427), (97, 131), (1024, 2048), (512, 512), (300, 4000)]:
    assert dense_eval.resized_size(*hw, p) == get_size_with_aspect_ratio(hw, 512, 1333)
    for q in (p, m):
      tf_size = dense_eval._resized_size_tf(tf.constant(hw, tf.int32), q)  # pylint: disable=protected-access
      assert tuple(tf_size.numpy()) == dense_eval.resized_size(*hw, q)
  # mmseg: Resize(scale=(2048, 512), keep_ratio=True) on ADE20K-like sizes
  assert dense_eval.resized_size(427, 640, m) == (512, 767)
  assert dense_eval.resized_size(1024, 2048, m) == (512, 1024)
  with pytest.raises(UserError, match="eval_long_side"):
    dense_eval.protocol(_config("/x", 64, eval_resize="mmseg"))
  with pytest.raises(UserError, match="eval_stride"):
    dense_eval.protocol(_config("/x", 64, eval_crop=32, eval_stride=40))
  with pytest.raises(UserError, match="not segmentation settings"):
    get_task("segmentation").check_config(_config("/x", 64, eval_mode="slide"))


@pytest.mark.slow
def test_segformer_trains_on_a_folder_and_scores_original_labels(tmp_path):
  root = str(tmp_path / "data")
  _shapes_folder(root, "training", [(32, 4), (48, 4), (40, 4)], 0)
  _shapes_folder(root, "validation", [(32, 2), (48, 2), (40, 2)], 1)
  wd = str(tmp_path / "run")
  config = tmp_path / "folder_config.py"  # the shapes config's tiny model on the folder
  config.write_text(
      "import importlib.util, os\n"
      f"spec = importlib.util.spec_from_file_location('c', {os.path.join(ROOT, 'configs', 'segformer_shapes.py')!r})\n"
      "mod = importlib.util.module_from_spec(spec)\n"
      "spec.loader.exec_module(mod)\n"
      "def get_config(arg=None):\n"
      "  c = mod.get_config('tiny')\n"
      f"  c.dataset.name = 'folder:{root}'\n"
      "  c.task_kwargs = dict(num_classes=4, eval_resize='short_side', eval_crop=32,\n"
      "                       eval_stride=16, eval_inference=arg)\n"
      "  return c\n")
  for inference in ("whole", "slide"):
    run_main(wd + inference, "total_steps=3", "eval_every_steps=3", "log_every_steps=3",
             "batch_size=4", "eval_batch_size=4", "input.image_size=32",
             "dataset.train_split=training", "dataset.eval_split=validation",
             config=f"{config}:{inference}")
    lines = [json.loads(l) for l in open(os.path.join(wd + inference, "metrics.jsonl"))]
    final = [l for l in lines if "eval/miou" in l][-1]
    assert final["step"] == 3 and 0 <= final["eval/miou"] <= 1
    assert np.isfinite(final["eval/loss"])


# ---------------------------------------------------------------------------
# Pictures on image files (python -m vitjax.tools.segment --images ...).

def _tool_workdir(tmp_path, name, **task_kwargs):
  import importlib.util  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  spec = importlib.util.spec_from_file_location(name, os.path.join(root, "configs",
                                                                     f"{name}_shapes.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config("tiny")
  c.input.image_size = 32
  c.task_kwargs.update(task_kwargs)
  d = tmp_path / name
  d.mkdir()
  (d / "config.json").write_text(json.dumps(c.to_dict()))
  return str(d)


@pytest.mark.parametrize("name,kw", [
    ("segformer", {}),
    pytest.param("segformer", {"eval_resize": "none"}, marks=pytest.mark.slow),
    pytest.param("maskformer", {}, marks=pytest.mark.slow)])
def test_segment_tool_draws_image_files_at_their_size(tmp_path, name, kw):
  from vitjax.tools import segment  # pylint: disable=g-import-not-at-top
  wd = _tool_workdir(tmp_path, name, **kw)
  rng = np.random.default_rng(0)
  files = []
  for i, (h, w) in enumerate([(37, 53), (64, 48)]):
    path = str(tmp_path / f"photo{i}.{'jpg' if i else 'png'}")
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    files.append(path)
  out = str(tmp_path / "drawn")
  paths = segment.run(wd, out, images=files, random_init=True)
  assert [os.path.basename(p) for p in paths] == ["photo0.png", "photo1.png"]
  for p, (h, w) in zip(paths, [(37, 53), (64, 48)]):
    drawn = np.asarray(Image.open(p))
    assert drawn.shape == (h, 2 * w, 3)  # image | overlay, at the original size
  np.testing.assert_array_equal(np.asarray(Image.open(paths[0]))[:, :53],
                                np.asarray(Image.open(files[0])))
  with pytest.raises(UserError, match="overwrite an input image"):
    segment.run(wd, str(tmp_path), images=[files[0]], random_init=True)
  with pytest.raises(UserError, match="cannot read"):
    segment.run(wd, out, images=[str(tmp_path / "config_missing.jpg")], random_init=True)
