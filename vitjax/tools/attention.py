"""Attention maps per layer and head, and attention rollout, as PNG overlays.

  python -m vitjax.tools.attention --workdir=/tmp/vitjax_quickstart --image=cat.png
  python -m vitjax.tools.attention --workdir=/tmp/vitjax_quickstart --index=3

Reads the workdir's config.json and latest checkpoint, preprocesses the image
as evaluation does (or takes image --index of the config's eval split), runs
the model once collecting every attention layer's weights (the 'attention'
intermediates that vitjax's attention layers sow) and writes into --out
(default WORKDIR/attention):
  layer_XX.png  - one panel per head: the attention of the class token to
                  every patch (models without a class token: the attention
                  each patch receives, averaged over queries), over the image;
  rollout.png   - attention rollout (Abnar & Zuidema 2020): per layer
                  0.5 * mean-over-heads + 0.5 * identity, rows renormalised,
                  multiplied through the layers (global-attention models);
  attention.npz - the raw weights.
`--mode=cls_heads` writes only cls_heads.png: the input and, per head, the
class token's attention to the patches in the last layer over the image
(DINO's Fig. 1 / 3 pictures), e.g. for a DINO run:
  python -m vitjax.tools.attention --workdir=/tmp/dino_digits --index=0 --mode=cls_heads
"""

import argparse
import os
import re
import sys

import numpy as np


def rollout(layers, residual: float = 0.5):
  """Attention rollout of a list of [H, N, N] weight matrices (same N)."""
  n = layers[0].shape[-1]
  result = np.eye(n)
  for w in layers:
    a = residual * np.eye(n) + (1 - residual) * np.asarray(w, np.float64).mean(0)
    a = a / a.sum(-1, keepdims=True)
    result = a @ result
  return result


def collect_attention(model, variables, image):
  """[(name, weights [H, Nq, Nk])] of every sown attention layer, in forward order."""
  import flax  # pylint: disable=g-import-not-at-top
  _, state = model.apply(variables, image[None], mutable=["intermediates"])
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(state.get("intermediates", {})))
  found = []
  for key, value in flat.items():
    if key[-1] != "attention":
      continue
    for i, w in enumerate(value if isinstance(value, tuple) else (value,)):
      name = "/".join(key[:-1]) + (f"#{i}" if i else "")
      found.append((name, np.asarray(w)[0]))
  natural = lambda s: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s[0])]
  return sorted(found, key=natural)


def token_map(w, prefix: int):
  """[H, grid, grid] maps: class-token attention, or attention received."""
  n_patch = w.shape[-1] - prefix
  side = int(round(np.sqrt(n_patch)))
  if side * side != n_patch:
    return None
  if prefix:
    m = w[:, 0, prefix:]
  else:
    m = w.mean(1)
  return m.reshape(w.shape[0], side, side)


def _overlay(ax, image, heat, title):
  import jax  # pylint: disable=g-import-not-at-top
  h, w = image.shape[:2]
  up = np.asarray(jax.image.resize(heat, (h, w), "bilinear"))
  ax.imshow(image)
  ax.imshow(up, cmap="inferno", alpha=0.6)
  ax.set_title(title, fontsize=8)
  ax.axis("off")


def render(workdir, out_dir, image_path=None, index=0, mode="all"):
  """Writes the PNGs and the .npz (mode 'all') or cls_heads.png; returns the files."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  from vitjax.errors import UserError  # pylint: disable=g-import-not-at-top
  from vitjax.runs import load_run  # pylint: disable=g-import-not-at-top
  run = load_run(workdir)
  config, model, variables = run.config, run.model, run.variables
  s = config.input.image_size
  mean, std = np.asarray(config.input.mean), np.asarray(config.input.std)
  if image_path:
    from PIL import Image  # pylint: disable=g-import-not-at-top
    try:
      raw = Image.open(image_path).convert("RGB").resize((s, s), Image.BICUBIC)
    except Exception as e:  # pylint: disable=broad-except
      raise UserError(f"--image={image_path!r} could not be read as an image: {e}") from e
    shown = np.asarray(raw, np.float32) / 255.0
    x = (shown - mean) / std
  else:
    from vitjax import data as data_lib  # pylint: disable=g-import-not-at-top
    seen = 0
    for batch in data_lib.eval_iterator(config):
      if index < seen + len(batch["image"]):
        x = np.asarray(batch["image"][index - seen])
        break
      seen += len(batch["image"])
    else:
      raise UserError(f"--index={index}: the eval split has only {seen} images.")
    shown = np.clip(x * std + mean, 0, 1)
  layers = collect_attention(model, variables, jnp.asarray(x, jnp.float32))
  if not layers:
    raise UserError(f"{config.model_name} sows no attention weights (its attention layers "
                    "are not softmax attention over tokens); nothing to draw.")
  prefix = int(getattr(model, "num_prefix_tokens", 0) or 0)
  os.makedirs(out_dir, exist_ok=True)
  if mode == "cls_heads":
    name, w = layers[-1]
    maps = token_map(w, prefix) if prefix and w.shape[-1] == w.shape[-2] else None
    if maps is None:
      raise UserError(f"--mode=cls_heads needs a class token attending over a square patch "
                      f"grid in the last layer ({config.model_name}: {name} {w.shape}).")
    fig, axes = plt.subplots(1, maps.shape[0] + 1, figsize=(2.2 * (maps.shape[0] + 1), 2.4),
                             squeeze=False)
    axes[0, 0].imshow(shown)
    axes[0, 0].axis("off")
    axes[0, 0].set_title("input", fontsize=8)
    for h in range(maps.shape[0]):
      _overlay(axes[0, h + 1], shown, maps[h], f"{name} head {h}")
    path = os.path.join(out_dir, "cls_heads.png")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path]
  written = []
  for li, (name, w) in enumerate(layers):
    maps = token_map(w, prefix if w.shape[-1] == w.shape[-2] else 0)
    if maps is None:
      continue
    heads = maps.shape[0]
    fig, axes = plt.subplots(1, heads, figsize=(2.2 * heads, 2.4), squeeze=False)
    for h in range(heads):
      _overlay(axes[0, h], shown, maps[h], f"{name} head {h}")
    path = os.path.join(out_dir, f"layer_{li:02d}.png")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)
  sizes = {w.shape for _, w in layers}
  if len(sizes) == 1 and layers[0][1].shape[-1] == layers[0][1].shape[-2]:
    r = rollout([w for _, w in layers])
    maps = token_map(r[None], prefix)
    if maps is not None:
      fig, ax = plt.subplots(1, 2, figsize=(5, 2.6))
      ax[0].imshow(shown)
      ax[0].axis("off")
      ax[0].set_title("input", fontsize=8)
      _overlay(ax[1], shown, maps[0], "attention rollout")
      path = os.path.join(out_dir, "rollout.png")
      fig.tight_layout()
      fig.savefig(path, dpi=100)
      plt.close(fig)
      written.append(path)
  path = os.path.join(out_dir, "attention.npz")
  np.savez(path, **{f"{i:02d}_{n.replace('/', '.')}": w for i, (n, w) in enumerate(layers)})
  written.append(path)
  return written


def main(argv=None):
  from vitjax.errors import UserError  # pylint: disable=g-import-not-at-top
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--image", default=None, help="an image file (default: --index)")
  ap.add_argument("--index", type=int, default=0, help="image of the eval split")
  ap.add_argument("--out", default=None, help="output folder (default WORKDIR/attention)")
  ap.add_argument("--mode", default="all", choices=["all", "cls_heads"],
                  help="all: every layer + rollout; cls_heads: the last layer's heads only")
  args = ap.parse_args(argv)
  try:
    files = render(args.workdir, args.out or os.path.join(args.workdir, "attention"),
                   args.image, args.index, args.mode)
  except UserError as e:
    sys.stderr.write(f"vitjax error: {e}\n")
    sys.exit(2)
  print("\n".join(files))


if __name__ == "__main__":
  main()
