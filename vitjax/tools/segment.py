"""Draws a trained segmenter's predicted masks on images, as PNGs.

  python -m vitjax.tools.segment --workdir=W --split=test --num=8 --out=DIR

Works for runs of the 'segmentation' task (SegFormer: per-pixel argmax) and
of the 'mask_classification' task (MaskFormer: semantic inference, or with
--mode=panoptic one colour per predicted segment). Reads the workdir's
config.json and latest checkpoint, takes `--num` images of the shapes set's
`--split` at the config's image size, and writes DIR/<split>_<i>.png: the
image | the prediction as a colour overlay | the true mask as an overlay
(background left uncoloured), enlarged to >= --display pixels. Prints the paths.

  python -m vitjax.tools.segment --workdir=W --images a.jpg b.png ... --out=DIR

draws the predictions on your own image files instead, at each image's
original size: DIR/<name>.png is the image | the prediction overlay. A
segmentation run predicts as its evaluation does (vitjax.data.dense_eval:
the run's eval_resize / eval_inference settings, logits resized to the
original size); a mask classification run sees the image resized to its
square input size, its masks resized back to the original size.
"""

import argparse
import os

import numpy as np

# Class / segment colours (class 0, the background, is not drawn).
PALETTE = np.array([(0, 0, 0), (230, 25, 75), (60, 180, 75), (0, 130, 200), (255, 225, 25),
                    (245, 130, 48), (145, 30, 180), (70, 240, 240), (240, 50, 230),
                    (210, 245, 60), (0, 128, 128)], np.float32)
TASKS = ("segmentation", "mask_classification")


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.55) -> np.ndarray:
  """uint8 [H, W, 3] + int [H, W] (0 / negative: not drawn) -> uint8 blend."""
  colours = PALETTE[1:][(np.maximum(labels, 1) - 1) % (len(PALETTE) - 1)]
  drawn = (labels > 0)[..., None]
  out = np.where(drawn, (1 - alpha) * image + alpha * colours, image)
  return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _load(workdir: str, random_init: bool = False, any_dataset: bool = False):
  """(config, model, variables, task name) of a segmentation / mask classification run."""
  from vitjax import runs  # pylint: disable=g-import-not-at-top
  from vitjax.data.dense import SHAPES_CLASSES  # pylint: disable=g-import-not-at-top
  from vitjax.errors import UserError  # pylint: disable=g-import-not-at-top
  config = runs.read_config(workdir)
  task = config.task
  if task not in TASKS:
    raise UserError(f"{workdir} is a {task!r} run; segment draws the masks of a "
                    f"{' or '.join(repr(t) for t in TASKS)} run.")
  if config.dataset.name != "shapes" and not any_dataset:
    raise UserError(f"segment draws the embedded shapes set; this run used "
                    f"{config.dataset.name!r}. Pass --images to draw on image files.")
  num_classes = (len(SHAPES_CLASSES) if config.dataset.name == "shapes"
                 else (config.get("task_kwargs") or {}).get("num_classes"))
  run = runs.load_run(workdir, config=config, num_classes=num_classes,
                      random_init=random_init)
  return config, run.model, run.variables, task


def predict(config, model, variables, task: str, images: np.ndarray, mode: str = "semantic",
            out_size=None):
  """uint8 images [N, S, S, 3] -> int labels [N, S, S] (classes, or segment ids + 1);
  out_size (h, w): the labels at that size instead (the logits / masks resized)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from vitjax.tasks import mask_classification as mc  # pylint: disable=g-import-not-at-top
  from vitjax.tasks.segmentation import upsample_logits  # pylint: disable=g-import-not-at-top
  mean, std = np.asarray(config.input.mean), np.asarray(config.input.std)
  x = jnp.asarray((images.astype(np.float32) / 255.0 - mean) / std, jnp.float32)
  s = images.shape[1]
  oh, ow = out_size or (s, s)

  @jax.jit
  def run(x):
    logits, out = model.apply(variables, x, train=False)
    if task == "segmentation":
      return jnp.argmax(upsample_logits(logits, oh, ow), -1)
    masks = jax.image.resize(out["masks"], out["masks"].shape[:2] + (oh, ow), "bilinear")
    if mode == "panoptic":
      seg, _ = mc.panoptic_inference(logits, masks)
      return jnp.where(seg == logits.shape[1], 0, seg + 1)  # 0: background or none
    return jnp.argmax(mc.semantic_inference(logits, masks), -1)
  return np.asarray(run(x))


def predict_original(config, model, variables, task: str, image: np.ndarray,
                     mode: str = "semantic") -> np.ndarray:
  """One uint8 image [H, W, 3] of any size -> int labels [H, W] at its own size."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  h, w = image.shape[:2]
  if task == "segmentation":
    from vitjax.data import dense_eval  # pylint: disable=g-import-not-at-top
    from vitjax.tasks import seg_inference  # pylint: disable=g-import-not-at-top
    batch = dense_eval.prepare(image, config)
    apply = lambda x: model.apply(variables, x, train=False)[0]
    logits = jax.jit(lambda b: seg_inference.infer(apply, b, dense_eval.protocol(config)))(
        {k: v for k, v in batch.items() if k != "mask"})
    return np.asarray(jnp.argmax(logits, -1))[0, :h, :w]
  s = config.input.image_size
  from PIL import Image  # pylint: disable=g-import-not-at-top
  square = np.asarray(Image.fromarray(image).resize((s, s), Image.BILINEAR))[None]
  scores = predict(config, model, variables, task, square, mode, out_size=(h, w))
  return scores[0]


def _read_image(path: str) -> np.ndarray:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from vitjax.errors import UserError  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as im:
      return np.asarray(im.convert("RGB"))
  except (OSError, ValueError) as e:
    raise UserError(f"--images: cannot read {path} as an image ({e}).") from None


def run_images(workdir: str, out: str, images, mode: str = "semantic",
               random_init: bool = False) -> list:
  """Draws the predictions on image files at their original sizes; returns the PNG paths."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from vitjax.errors import UserError  # pylint: disable=g-import-not-at-top
  config, model, variables, task = _load(workdir, random_init, any_dataset=True)
  if mode == "panoptic" and task != "mask_classification":
    raise UserError("--mode=panoptic needs a 'mask_classification' (MaskFormer) run.")
  names = [os.path.splitext(os.path.basename(p))[0] for p in images]
  targets = [os.path.join(out, f"{n}.png") for n in names]
  inputs = {os.path.abspath(p) for p in images}
  clash = [t for t in targets if os.path.abspath(t) in inputs]
  if clash or len(set(targets)) < len(targets):
    raise UserError(f"--out={out}: the drawings would overwrite an input image or each other "
                    f"({clash or sorted(targets)}); use another --out folder or unique names.")
  pictures = [_read_image(p) for p in images]
  os.makedirs(out, exist_ok=True)
  for image, path in zip(pictures, targets):
    pred = predict_original(config, model, variables, task, image, mode)
    Image.fromarray(np.concatenate([image, overlay(image, pred)], axis=1)).save(path)
  return targets


def run(workdir: str, out: str, split: str = "test", num: int = 8, mode: str = "semantic",
        display: int = 256, random_init: bool = False, images=None) -> list:
  """Writes the overlay PNGs; returns their paths."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from vitjax.data import shapes  # pylint: disable=g-import-not-at-top
  from vitjax.errors import UserError  # pylint: disable=g-import-not-at-top
  if mode not in ("semantic", "panoptic"):
    raise UserError(f"--mode={mode!r}: use 'semantic' or 'panoptic'.")
  if images:
    return run_images(workdir, out, images, mode, random_init)
  config, model, variables, task = _load(workdir, random_init)
  if mode == "panoptic" and task != "mask_classification":
    raise UserError("--mode=panoptic needs a 'mask_classification' (MaskFormer) run.")
  kw = config.task_kwargs
  size = int(kw.get("shapes_image_size", config.input.image_size))
  records = shapes.generate(split, num, config.seed, size, int(kw.get("shapes_max_objects", 4)),
                            tuple(kw.get("shapes_size_range", (0.1, 0.25))))
  images = np.stack([r["image"] for r in records])
  pred = predict(config, model, variables, task, images, mode)
  os.makedirs(out, exist_ok=True)
  k = max(1, int(np.ceil(display / size)))
  paths = []
  for i, r in enumerate(records):
    truth = r["semantic_mask"].astype(np.int32)
    if mode == "panoptic":
      truth = np.zeros_like(truth)
      for j, m in enumerate(r["instance_masks"]):
        truth[m] = j + 1
    panel = np.concatenate([r["image"], overlay(r["image"], pred[i]),
                            overlay(r["image"], truth)], axis=1)
    img = Image.fromarray(panel).resize((panel.shape[1] * k, panel.shape[0] * k), Image.NEAREST)
    path = os.path.join(out, f"{split}_{i}.png")
    img.save(path)
    paths.append(path)
  return paths


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--out", required=True)
  ap.add_argument("--split", default="test", choices=("train", "validation", "test"))
  ap.add_argument("--num", type=int, default=8)
  ap.add_argument("--mode", default="semantic", choices=("semantic", "panoptic"))
  ap.add_argument("--display", type=int, default=256)
  ap.add_argument("--images", nargs="+", default=None,
                  help="image files to draw on at their own sizes (instead of the shapes set)")
  a = ap.parse_args(argv)
  from vitjax.errors import UserError  # pylint: disable=g-import-not-at-top
  try:
    for p in run(a.workdir, a.out, a.split, a.num, a.mode, a.display, images=a.images):
      print(p)
  except UserError as e:
    raise SystemExit(f"vitjax error: {e}") from None


if __name__ == "__main__":
  main()
