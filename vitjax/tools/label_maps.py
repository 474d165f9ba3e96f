"""Writes token-labeling score maps of a train split to disk (LV-ViT's label maps).

  python -m vitjax.tools.label_maps --teacher=/tmp/vit_digits --out=/tmp/digit_maps \
      [--topk 5] [--dtype float16] [--batch 256]

Runs the teacher run's model (its workdir's config.json and latest
checkpoint) over every *whole* image of its dataset's train split, in the
source's order, and keeps the top-k logits of every position of its dense
score map (vitjax.tasks.token_labeling.teacher_score_map: LV-ViT's token
logits, or the head applied to every position of the final feature map).
Layout and use: vitjax.data.label_maps. Train a student with them:

  python -m vitjax.main --config=configs/lvvit_digits.py --workdir=/tmp/lvvit_tl \
      --config.task_kwargs.label_maps=/tmp/digit_maps --config.input.return_geometry=True
"""

import argparse
import json
import os
import sys


def write_label_maps(teacher_workdir: str, out: str, topk: int = 5,
                     dtype: str = "float16", batch_size: int = 256) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from vitjax.data import input_pipeline as ip  # pylint: disable=g-import-not-at-top
  from vitjax.data import preprocess  # pylint: disable=g-import-not-at-top
  from vitjax.data.source import ArraySource  # pylint: disable=g-import-not-at-top
  from vitjax.errors import UserError  # pylint: disable=g-import-not-at-top
  from vitjax.tasks.token_labeling import teacher_score_map  # pylint: disable=g-import-not-at-top
  from vitjax.runs import load_run  # pylint: disable=g-import-not-at-top

  run = load_run(teacher_workdir)
  config, model, variables = run.config, run.model, run.variables
  source = ip.make_source(config)
  if not isinstance(source, ArraySource):
    raise UserError(f"label maps need a random-access train split (digits, imagefolder); "
                    f"{config.dataset.name!r} is a TFDS dataset.")
  prep = ip.preprocessing(config)
  a, b = source.train_data
  n = len(b)
  num_classes = source.info.num_classes
  if not 0 < topk <= num_classes:
    raise UserError(f"--topk must be in 1..{num_classes} (the number of classes), got {topk}.")
  ds = tf.data.Dataset.from_tensor_slices((a, b)).map(
      lambda x, y: preprocess.whole_image(source.load(x, y)[0], prep))
  ds = ds.batch(batch_size).prefetch(2)

  @jax.jit
  def scores(images):
    _, o = model.apply(variables, images, train=False)
    return jax.lax.top_k(teacher_score_map(o, variables, model).astype(np.float32), topk)

  os.makedirs(out, exist_ok=True)
  values = indices = None
  start = 0
  for images in ds.as_numpy_iterator():
    v, i = jax.device_get(scores(images))
    if values is None:
      shape = (n,) + v.shape[1:]
      values = np.lib.format.open_memmap(os.path.join(out, "values.npy"), "w+", dtype, shape)
      indices = np.lib.format.open_memmap(os.path.join(out, "indices.npy"), "w+", np.int32,
                                          shape)
    values[start:start + len(v)] = v
    indices[start:start + len(v)] = i
    start += len(v)
  values.flush()
  indices.flush()
  meta = dict(num_classes=num_classes, num_examples=n, grid=list(values.shape[1:3]),
              topk=topk, dtype=dtype, dataset=config.dataset.name,
              split=config.dataset.train_split, teacher=os.path.abspath(teacher_workdir))
  with open(os.path.join(out, "meta.json"), "w") as f:
    json.dump(meta, f, indent=1)
  return meta


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--teacher", required=True, help="workdir of a trained vitjax run")
  ap.add_argument("--out", required=True, help="directory to write the maps to")
  ap.add_argument("--topk", type=int, default=5)
  ap.add_argument("--dtype", default="float16", choices=["float16", "float32"])
  ap.add_argument("--batch", type=int, default=256)
  args = ap.parse_args(argv)
  from vitjax.errors import UserError  # pylint: disable=g-import-not-at-top
  try:
    meta = write_label_maps(args.teacher, args.out, args.topk, args.dtype, args.batch)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(json.dumps(meta))
  return 0


if __name__ == "__main__":
  sys.exit(main())
