"""Draws a trained segmenter's predicted masks on images, as PNGs.

  python -m vitjax.tools.segment --workdir=W --split=test --num=8 --out=DIR

Works for runs of the 'segmentation' task (SegFormer: per-pixel argmax) and
of the 'mask_classification' task (MaskFormer: semantic inference, or with
--mode=panoptic one colour per predicted segment). Reads the workdir's
config.json and latest checkpoint, takes `--num` images of the shapes set's
`--split` at the config's image size, and writes DIR/<split>_<i>.png: the
image | the prediction as a colour overlay | the true mask as an overlay
(background left uncoloured), enlarged to >= --display pixels. Prints the paths.
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


def _load(workdir: str, random_init: bool = False):
  """(config, model, variables, task name) of a segmentation / mask classification run."""
  from vitjax import runs  # pylint: disable=g-import-not-at-top
  from vitjax.data.dense import SHAPES_CLASSES  # pylint: disable=g-import-not-at-top
  from vitjax.errors import UserError  # pylint: disable=g-import-not-at-top
  config = runs.read_config(workdir)
  task = config.task
  if task not in TASKS:
    raise UserError(f"{workdir} is a {task!r} run; segment draws the masks of a "
                    f"{' or '.join(repr(t) for t in TASKS)} run.")
  if config.dataset.name != "shapes":
    raise UserError(f"segment draws the embedded shapes set; this run used "
                    f"{config.dataset.name!r}.")
  run = runs.load_run(workdir, config=config, num_classes=len(SHAPES_CLASSES),
                      random_init=random_init)
  return config, run.model, run.variables, task


def predict(config, model, variables, task: str, images: np.ndarray, mode: str = "semantic"):
  """uint8 images [N, S, S, 3] -> int labels [N, S, S] (classes, or segment ids + 1)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from vitjax.tasks import mask_classification as mc  # pylint: disable=g-import-not-at-top
  from vitjax.tasks.segmentation import upsample_logits  # pylint: disable=g-import-not-at-top
  mean, std = np.asarray(config.input.mean), np.asarray(config.input.std)
  x = jnp.asarray((images.astype(np.float32) / 255.0 - mean) / std, jnp.float32)
  s = images.shape[1]

  @jax.jit
  def run(x):
    logits, out = model.apply(variables, x, train=False)
    if task == "segmentation":
      return jnp.argmax(upsample_logits(logits, s, s), -1)
    masks = jax.image.resize(out["masks"], out["masks"].shape[:2] + (s, s), "bilinear")
    if mode == "panoptic":
      seg, _ = mc.panoptic_inference(logits, masks)
      return jnp.where(seg == logits.shape[1], 0, seg + 1)  # 0: background or none
    return jnp.argmax(mc.semantic_inference(logits, masks), -1)
  return np.asarray(run(x))


def run(workdir: str, out: str, split: str = "test", num: int = 8, mode: str = "semantic",
        display: int = 256, random_init: bool = False) -> list:
  """Writes the overlay PNGs; returns their paths."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from vitjax.data import shapes  # pylint: disable=g-import-not-at-top
  from vitjax.errors import UserError  # pylint: disable=g-import-not-at-top
  if mode not in ("semantic", "panoptic"):
    raise UserError(f"--mode={mode!r}: use 'semantic' or 'panoptic'.")
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
  a = ap.parse_args(argv)
  from vitjax.errors import UserError  # pylint: disable=g-import-not-at-top
  try:
    for p in run(a.workdir, a.out, a.split, a.num, a.mode, a.display):
      print(p)
  except UserError as e:
    raise SystemExit(f"vitjax error: {e}") from None


if __name__ == "__main__":
  main()
