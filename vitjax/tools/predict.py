"""Predicts on image files with a run (or an imported checkpoint).

  python -m vitjax.tools.predict --workdir=W --images a.jpg b.png --topk 5
  python -m vitjax.tools.predict --checkpoint=/snapshots/vit --config=configs/finetune.py:vit_base_patch16_224 --images a.jpg
  python -m vitjax.tools.predict --workdir=W_detection --images street.jpg --out=DIR

Classification runs: each image is preprocessed as the config's evaluation
does (vitjax.data.preprocess.eval_image) and its top-k classes are printed
with their names and probabilities. Detection runs: the boxes are drawn by
vitjax.tools.detect; segmentation / mask-classification runs: the predicted
masks by vitjax.tools.segment's overlay; the pictures go to --out (PNG per
image) and their paths are printed. The model, weights and config are chosen
as for vitjax.tools.evaluate (--workdir, --checkpoint, --config, --config.x=y).
"""

import argparse
import os
from typing import List

import numpy as np

from vitjax.errors import UserError
from vitjax.tools import evaluate as evaluate_tool

DENSE = ("segmentation", "mask_classification")


def _read(path: str):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    return Image.open(path).convert("RGB")
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f"--images: {path!r} could not be read as an image ({e}).") from None


def classify(subject, images: List[str], topk: int = 5) -> List[List[tuple]]:
  """Per image, the top-k (class name, probability) pairs, most likely first."""
  import jax  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from vitjax.data import input_pipeline, preprocess  # pylint: disable=g-import-not-at-top
  p = input_pipeline.preprocessing(subject.config)
  x = []
  for path in images:
    _read(path)  # a clear message for a file that is not an image
    x.append(preprocess.eval_image(tf.constant(open(path, "rb").read()), p).numpy())
  logits, _ = jax.jit(lambda v, x: subject.model.apply(v, x, train=False))(
      subject.variables, np.stack(x))
  probs = np.asarray(jax.nn.softmax(logits.astype(np.float32), -1))
  names = subject.class_names or ()
  label = lambda c: str(names[c]) if c < len(names) else f"class_{c}"
  k = min(topk, probs.shape[1])
  return [[(label(int(c)), float(row[c])) for c in np.argsort(-row)[:k]] for row in probs]


def segment(subject, images: List[str], out: str, display: int = 256) -> List[str]:
  """Writes image | predicted-mask overlay PNGs to `out`; returns their paths."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from vitjax.tools import segment as segment_tool  # pylint: disable=g-import-not-at-top
  s = subject.config.input.image_size
  os.makedirs(out, exist_ok=True)
  paths = []
  for path in images:
    image = np.asarray(_read(path).resize((s, s), Image.BILINEAR))
    pred = segment_tool.predict(subject.config, subject.model, subject.variables,
                                subject.config.task, image[None])[0]
    panel = np.concatenate([image, segment_tool.overlay(image, pred)], axis=1)
    k = max(1, int(np.ceil(display / s)))
    dest = os.path.join(out, os.path.splitext(os.path.basename(path))[0] + ".png")
    Image.fromarray(panel).resize((panel.shape[1] * k, panel.shape[0] * k),
                                  Image.NEAREST).save(dest)
    paths.append(dest)
  return paths


def run(workdir: str = "", images=(), topk: int = 5, out: str = "", checkpoint: str = "",
        config_spec: str = "", overrides=(), threshold: float = 0.5):
  """Classification: [[(name, prob)] per image]; detection / segmentation: PNG paths."""
  if not images:
    raise UserError("Give the image files to predict on: --images a.jpg b.png ...")
  if topk < 1:
    raise UserError(f"--topk={topk} must be >= 1.")
  subject = evaluate_tool.load_subject(workdir, checkpoint, config_spec, overrides)
  task = subject.config.task
  if task == "detection" or task in DENSE:
    if not out:
      raise UserError(f"A {task!r} run draws its predictions: give --out=DIR for the PNGs.")
    if task == "detection":
      if checkpoint or overrides:
        raise UserError("Detection pictures are drawn from a workdir's own config and "
                        "weights (vitjax.tools.detect); drop --checkpoint / --config.")
      from vitjax.tools import detect  # pylint: disable=g-import-not-at-top
      return [p for image in images
              for p in detect.run(workdir, out, image=image, threshold=threshold)]
    return segment(subject, list(images), out)
  return classify(subject, list(images), topk)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--workdir", default="")
  ap.add_argument("--checkpoint", default="")
  ap.add_argument("--config", default="")
  ap.add_argument("--images", nargs="+", default=[])
  ap.add_argument("--topk", type=int, default=5)
  ap.add_argument("--threshold", type=float, default=0.5, help="detection: minimum score")
  ap.add_argument("--out", default="", help="detection / segmentation: where the PNGs go")
  args, overrides = ap.parse_known_args(argv)
  try:
    result = run(args.workdir, args.images, args.topk, args.out, args.checkpoint, args.config,
                 overrides, args.threshold)
  except UserError as e:
    raise SystemExit(f"vitjax error: {e}") from None
  if result and isinstance(result[0], str):
    print("\n".join(result))
    return
  for path, top in zip(args.images, result):
    print(f"{path}: " + "  ".join(f"{name} {p:.3f}" for name, p in top))


if __name__ == "__main__":
  main()
