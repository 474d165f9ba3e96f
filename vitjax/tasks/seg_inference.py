"""Segmentation logits at the original label size: whole-image and sliding-window inference.

Inputs are the batches of vitjax.data.dense_eval: images padded to a canvas,
`image_size` (the resized image inside it), `label_size` (the original size).

whole   (HF `post_process_semantic_segmentation(target_sizes=...)`): the
        model runs on the canvas; the logits of the image's part (image_size
        scaled by the model's output stride) are resized bilinearly, once, to
        the original size.
slide   (mmseg `slide_inference`): crop (ch, cw) windows with stride (sh, sw);
        per axis n = max(H - ch + sh - 1, 0) // sh + 1 windows, window i at
        y1 = i * sh, y2 = min(y1 + ch, H), then y1 = max(y2 - ch, 0) (the last
        window is moved back to end at the image's edge); each window's logits
        are resized to the crop size and added up, every pixel divided by the
        number of windows that covered it; the image's part is then resized to
        the original size. An image smaller than the crop was padded to it
        (dense_eval's canvas), so every window is a full crop (mmseg runs the
        model on the smaller image instead).
Resizing is bilinear with half-pixel centres and edge clamping, without
antialiasing (torch's `F.interpolate(..., align_corners=False)`), as both
references do. Shapes are static: outputs are [B, Lh, Lw, C] on the label
canvas; what lies beyond a label map's size is undefined (its labels are
ignore_index there).
"""

import jax
import jax.numpy as jnp
from jax import lax


def resize_part(x, part_hw, out_hw, out_shape):
  """[h, w, C]: its top-left part_hw (float sizes, in x's pixels) resized bilinearly to
  out_hw (int), written into the top-left of an out_shape (static (H, W)) map."""
  h, w, c = x.shape
  last = jnp.ceil(part_hw).astype(jnp.int32) - 1
  x = x[jnp.minimum(jnp.arange(h), last[0])][:, jnp.minimum(jnp.arange(w), last[1])]
  scale = out_hw.astype(jnp.float32) / part_hw.astype(jnp.float32)
  return jax.image.scale_and_translate(x, tuple(out_shape) + (c,), (0, 1), scale,
                                       jnp.zeros(2, jnp.float32), "linear", antialias=False)


def whole(apply_fn, images, image_size, label_size, label_canvas):
  """Whole-image inference: logits [B, Lh, Lw, C] (see the module docstring)."""
  logits = apply_fn(images).astype(jnp.float32)
  stride = jnp.array([logits.shape[1] / images.shape[1], logits.shape[2] / images.shape[2]],
                     jnp.float32)
  part = image_size.astype(jnp.float32) * stride
  return jax.vmap(lambda x, p, o: resize_part(x, p, o, label_canvas))(logits, part, label_size)


def _window_grid(image_size, crop, stride):
  """Per image: the padded size (at least the crop) and the windows per axis."""
  crop, stride = jnp.array(crop), jnp.array(stride)
  size = jnp.maximum(image_size, crop)
  return size, jnp.maximum(size - crop + stride - 1, 0) // stride + 1


def slide(apply_fn, images, image_size, label_size, label_canvas, crop, stride):
  """Sliding-window inference: logits [B, Lh, Lw, C] (see the module docstring)."""
  b, hc, wc, _ = images.shape
  (ch, cw), (sh, sw) = crop, stride
  nh = max(hc - ch + sh - 1, 0) // sh + 1
  nw = max(wc - cw + sw - 1, 0) // sw + 1
  c = jax.eval_shape(apply_fn, jax.ShapeDtypeStruct((b, ch, cw, 3), images.dtype)).shape[-1]
  size, grid = _window_grid(image_size, crop, stride)

  def add(acc, value, y, x):
    part = lax.dynamic_slice(acc, (y, x, 0), value.shape)
    return lax.dynamic_update_slice(acc, part + value, (y, x, 0))

  def window(k, carry):
    preds, count = carry
    i, j = k // nw, k % nw
    y2 = jnp.minimum(i * sh + ch, size[:, 0])
    x2 = jnp.minimum(j * sw + cw, size[:, 1])
    y1, x1 = jnp.maximum(y2 - ch, 0), jnp.maximum(x2 - cw, 0)
    used = ((i < grid[:, 0]) & (j < grid[:, 1])).astype(jnp.float32)[:, None, None, None]
    crops = jax.vmap(lambda im, y, x: lax.dynamic_slice(im, (y, x, 0), (ch, cw, 3)))(
        images, y1, x1)
    logits = apply_fn(crops).astype(jnp.float32)
    logits = jax.image.resize(logits, (b, ch, cw, c), "bilinear", antialias=False)
    preds = jax.vmap(add)(preds, logits * used, y1, x1)
    count = jax.vmap(add)(count, jnp.broadcast_to(used, (b, ch, cw, 1)), y1, x1)
    return preds, count

  preds, count = lax.fori_loop(0, nh * nw, window, (jnp.zeros((b, hc, wc, c), jnp.float32),
                                                     jnp.zeros((b, hc, wc, 1), jnp.float32)))
  preds = preds / jnp.maximum(count, 1.0)
  return jax.vmap(lambda x, p, o: resize_part(x, p, o, label_canvas))(
      preds, image_size.astype(jnp.float32), label_size)


def infer(apply_fn, batch, p: dict):
  """Logits on the label canvas for a dense_eval batch, by p['inference']."""
  canvas = batch["label"].shape[1:3]
  if p["inference"] == "slide":
    return slide(apply_fn, batch["image"], batch["image_size"], batch["label_size"], canvas,
                 p["crop"], p["stride"])
  return whole(apply_fn, batch["image"], batch["image_size"], batch["label_size"], canvas)
