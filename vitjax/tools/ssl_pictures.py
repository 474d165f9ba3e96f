"""Masked-image-modelling pictures: original / masked / reconstructed, as a PNG.

  python -m vitjax.tools.ssl_pictures --workdir=/tmp/mae_digits --split=test --num=8 --out=/tmp/pics

Reads the workdir's config.json (task 'mae' or 'simmim', model, dataset,
preprocessing) and its latest checkpoint, masks the first --num images of
--split with a fixed seed, and writes DIR/<task>_reconstructions.png: one
row per image, columns original, masked (masked patches set to 0 in the model's input
space, i.e. the dataset's mean colour) and
reconstructed (the model's pixels on the masked patches, the original ones
elsewhere, as in the MAE paper's figures). MAE predictions of normalised
pixels (norm_pix_loss) are mapped back with each patch's own mean and std;
SimMIM's (task_kwargs.norm_pix_loss) with each predicted cell's.
"""

import argparse
import os
import sys

TASKS = ("mae", "simmim")


def reconstruct(task: str, model, variables, images, rng, simmim_norm_pix: bool = False):
  """(masked, reconstructed) images in the model's input space, and the
  [B, H, W, 1] pixel mask (1 = masked)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  b, h, w, c = images.shape
  if task == "mae":
    from vitjax.models.mae import patchify, unpatchify  # pylint: disable=g-import-not-at-top
    pred, out = model.apply(variables, images, train=False, rngs={"masking": rng})
    p = model.patch_size
    patches = patchify(images, p)
    if model.norm_pix_loss:
      mean = jnp.mean(patches, axis=-1, keepdims=True)
      var = jnp.var(patches, axis=-1, keepdims=True, ddof=1)
      pred = pred * jnp.sqrt(var + 1e-6) + mean
    m = out["mask"][..., None]
    grid = (h // p, w // p)
    rec = unpatchify(pred * m + patches * (1 - m), grid, p, c)
    pix = unpatchify(jnp.broadcast_to(m, patches.shape), grid, p, c)[..., :1]
  elif task == "simmim":
    from vitjax.tasks import simmim  # pylint: disable=g-import-not-at-top
    mask = simmim.random_block_mask(rng, b, h, model.mask_patch_size, model.patch_size,
                                    model.mask_ratio)
    pred, _ = model.apply(variables, images, train=False, mask=mask)
    if simmim_norm_pix:  # back from per-cell normalised pixels
      cells, mean, std = simmim.cell_stats(images, model.stride)
      pred = (pred.reshape(cells.shape) * std + mean).reshape(images.shape)
    pix = simmim.pixel_mask(mask, model.patch_size)
    rec = pred * pix + images * (1 - pix)
  else:
    raise ValueError(task)
  return images * (1 - pix), rec, pix


def grid_png(rows, path: str, scale: int):
  """rows: list of [H, W, 3] float images in [0, 1] per column -> one PNG."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  pad = 2
  h, w, _ = rows[0][0].shape
  n_r, n_c = len(rows), len(rows[0])
  canvas = np.ones((n_r * (h * scale + pad) + pad, n_c * (w * scale + pad) + pad, 3))
  for i, row in enumerate(rows):
    for j, img in enumerate(row):
      big = np.kron(np.clip(img, 0, 1), np.ones((scale, scale, 1)))
      y, x = pad + i * (h * scale + pad), pad + j * (w * scale + pad)
      canvas[y:y + h * scale, x:x + w * scale] = big
  Image.fromarray((canvas * 255).round().astype(np.uint8)).save(path)


def make_pictures(workdir: str, out_dir: str, split: str = "test", num: int = 8,
                  seed: int = 0, scale: int = 0) -> str:
  """Writes the PNG grid for the run in `workdir`; returns its path."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from vitjax import data as data_lib  # pylint: disable=g-import-not-at-top
  from vitjax.errors import UserError  # pylint: disable=g-import-not-at-top
  from vitjax import runs  # pylint: disable=g-import-not-at-top

  config = runs.read_config(workdir)
  task = config.task
  norm_pix = bool(config.task_kwargs.get("norm_pix_loss", False))
  if task not in TASKS:
    raise UserError(f"{workdir} holds a config.task={task!r} run; pictures are for "
                    f"{' / '.join(TASKS)} checkpoints.")
  run = runs.load_run(workdir, config=config)
  model, variables = run.model, run.variables
  config.dataset.eval_split = split
  images = []
  for batch in data_lib.eval_iterator(config):
    images += [im for im, ok in zip(batch["image"], batch["mask"]) if ok]
    if len(images) >= num:
      break
  images = np.stack(images[:num]).astype(np.float32)
  masked, rec, _ = reconstruct(task, model, variables, images, jax.random.PRNGKey(seed),
                               simmim_norm_pix=task == "simmim" and norm_pix)
  mean = np.asarray(config.input.mean, np.float32)
  std = np.asarray(config.input.std, np.float32)
  to_unit = lambda x: np.asarray(x) * std + mean
  scale = scale or max(1, 96 // images.shape[1])
  rows = [[to_unit(images[i]), to_unit(masked[i]), to_unit(rec[i])]
          for i in range(len(images))]
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, f"{task}_reconstructions.png")
  grid_png(rows, path, scale)
  return path


def main(argv=None):
  # argparse, not absl flags (vitjax.tools.probe defines absl's --workdir).
  from vitjax.errors import UserError  # pylint: disable=g-import-not-at-top
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--workdir", required=True, help="A vitjax MAE or SimMIM workdir.")
  ap.add_argument("--split", default="test", help="Dataset split to draw the images from.")
  ap.add_argument("--num", type=int, default=8, help="Number of images (rows).")
  ap.add_argument("--out", required=True, help="Output folder (created).")
  ap.add_argument("--seed", type=int, default=0, help="Seed of the masks.")
  ap.add_argument("--scale", type=int, default=0, help="Pixels per image pixel (0: to ~96 px).")
  args = ap.parse_args(argv)
  try:
    path = make_pictures(args.workdir, args.out, args.split, args.num, args.seed, args.scale)
  except UserError as e:
    sys.stderr.write(f"error: {e}\n")
    sys.exit(2)
  print(path)


if __name__ == "__main__":
  main()
