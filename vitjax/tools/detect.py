"""Draws a trained detector's boxes (class name and score) on images, as PNGs.

  python -m vitjax.tools.detect --workdir=W --image=photo.jpg --out=DIR
  python -m vitjax.tools.detect --workdir=W --split=test --num=8 --out=DIR

Reads the workdir's config.json and latest checkpoint (a run of the
'detection' task), preprocesses as evaluation does (resize to the config's
image_size), keeps detections scoring >= --threshold and draws them with PIL
on the image (shown at >= --display pixels). --split reads that split of the
config's data set. Writes DIR/<name>.png per image; prints the paths.
"""

import argparse
import os

import numpy as np

PALETTE = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
           (145, 30, 180), (70, 240, 240), (240, 50, 230))


def load_detector(workdir: str):
  """(config, task, variables) of a detection run in `workdir`."""
  from vitjax import runs  # pylint: disable=g-import-not-at-top
  from vitjax.errors import UserError  # pylint: disable=g-import-not-at-top
  from vitjax.tasks import get_task  # pylint: disable=g-import-not-at-top
  config = runs.read_config(workdir)
  if config.task != "detection":
    raise UserError(f"{workdir} is a {config.task!r} run; detect draws the boxes of "
                    "a 'detection' run.")
  run = runs.load_run(workdir, config=config)
  info = run.info or runs.dataset_info(config)
  return config, get_task("detection")(config, info, run.model), run.variables


def draw(image: np.ndarray, boxes, classes, scores, class_names, display: int = 256):
  """uint8 [H, W, 3] + xyxy boxes in [0, 1] -> PIL image with labelled boxes."""
  from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top
  h, w = image.shape[:2]
  k = max(1, int(np.ceil(display / max(h, w))))
  img = Image.fromarray(image).resize((w * k, h * k), Image.NEAREST)
  pen = ImageDraw.Draw(img)
  for b, c, s in zip(boxes, classes, scores):
    x0, y0, x1, y1 = (float(v) for v in np.clip(b, 0, 1) * [w * k, h * k, w * k, h * k])
    colour = PALETTE[int(c) % len(PALETTE)]
    pen.rectangle([x0, y0, x1, y1], outline=colour, width=2)
    name = class_names[int(c)] if int(c) < len(class_names) else str(int(c))
    pen.text((x0 + 2, max(y0 - 11, 0)), f"{name} {float(s):.2f}", fill=colour)
  return img


def run(workdir: str, out: str, image: str = "", split: str = "", num: int = 8,
        threshold: float = 0.5, display: int = 256) -> list:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from vitjax.errors import UserError  # pylint: disable=g-import-not-at-top
  from vitjax.tasks.base import apply_model  # pylint: disable=g-import-not-at-top
  from vitjax.tasks.detection import postprocess  # pylint: disable=g-import-not-at-top
  if bool(image) == bool(split):
    raise UserError("Give exactly one of --image=PATH or --split=NAME.")
  config, task, variables = load_detector(workdir)
  s = config.input.image_size
  mean, std = np.asarray(config.input.mean), np.asarray(config.input.std)
  if image:
    from PIL import Image  # pylint: disable=g-import-not-at-top
    try:
      raw = Image.open(image).convert("RGB")
    except Exception as e:  # pylint: disable=broad-except
      raise UserError(f"--image={image!r} could not be read as an image: {e}") from e
    shown = [np.asarray(raw)]
    x = [(np.asarray(raw.resize((s, s), Image.BILINEAR), np.float32) / 255.0 - mean) / std]
    names = [os.path.splitext(os.path.basename(image))[0]]
  else:
    from vitjax.data import detection as det_data  # pylint: disable=g-import-not-at-top
    config.dataset.eval_split = split
    x = []
    for batch in det_data.eval_iterator(config):
      x += [im for im, m in zip(batch["image"], batch["mask"]) if m]
      if len(x) >= num:
        break
    x = x[:num]
    shown = [np.clip(np.round((im * std + mean) * 255), 0, 255).astype(np.uint8) for im in x]
    names = [f"{split}_{i:04d}" for i in range(len(x))]
  params = variables.pop("params")

  @jax.jit
  def predict(images):
    logits, o, _ = apply_model(task.model, params, variables, images, train=False)
    return postprocess(logits, o["boxes"], task.opts["class_loss"], task.opts["max_detections"])

  os.makedirs(out, exist_ok=True)
  paths = []
  for im, name, disp in zip(x, names, shown):
    scores, classes, boxes = (np.asarray(a[0]) for a in predict(jnp.asarray(im)[None]))
    keep = scores >= threshold
    pic = draw(disp, boxes[keep], classes[keep], scores[keep], task.info.class_names, display)
    path = os.path.join(out, name + ".png")
    pic.save(path)
    paths.append(path)
  return paths


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--image", default="")
  ap.add_argument("--split", default="")
  ap.add_argument("--num", type=int, default=8)
  ap.add_argument("--threshold", type=float, default=0.5)
  ap.add_argument("--display", type=int, default=256)
  ap.add_argument("--out", required=True)
  args = ap.parse_args(argv)
  for p in run(args.workdir, args.out, args.image, args.split, args.num, args.threshold,
               args.display):
    print(p)


if __name__ == "__main__":
  main()
