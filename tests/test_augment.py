"""RandAugment ops against PIL / numpy, determinism, random erasing, Mixup /
CutMix label mass and boxes, AugReg presets and bad settings."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageEnhance, ImageOps

from vitjax.config import default_config, validate_config
from vitjax.data import augment
from vitjax.data import input_pipeline
from vitjax.data import preprocess
from vitjax.errors import UserError
from vitjax.tasks import mixing


def _uint8_image(h=8, w=8, seed=0):
  return np.random.RandomState(seed).randint(0, 256, (h, w, 3)).astype(np.uint8)


def _f(u8):
  return tf.constant(u8.astype(np.float32) / 255.0)


def _u8(x):
  return np.round(np.asarray(x) * 255.0).astype(np.int32)


def _pil(u8, fn):
  return np.asarray(fn(Image.fromarray(u8))).astype(np.int32)


def test_rotate_90_is_rot90():
  img = np.random.RandomState(0).rand(7, 7, 3).astype(np.float32)
  out = augment.rotate(tf.constant(img), 90.0).numpy()
  np.testing.assert_allclose(out, np.rot90(img, k=1), atol=1e-5)
  out = augment.rotate(tf.constant(img), -90.0).numpy()
  np.testing.assert_allclose(out, np.rot90(img, k=-1), atol=1e-5)


def test_translate_shifts_and_fills_grey():
  img = np.random.RandomState(1).rand(6, 6, 3).astype(np.float32)
  out = augment.translate(tf.constant(img), 2.0, 0.0).numpy()
  np.testing.assert_allclose(out[:, 2:], img[:, :-2], atol=1e-6)
  np.testing.assert_allclose(out[:, :2], 0.5)
  out = augment.translate(tf.constant(img), 0.0, -1.0).numpy()
  np.testing.assert_allclose(out[:-1], img[1:], atol=1e-6)


@pytest.mark.parametrize("name,ours,pil", [
    ("invert", lambda x: augment.invert(x), ImageOps.invert),
    ("solarize", lambda x: augment.solarize(x, 100 / 255), lambda im: ImageOps.solarize(im, 100)),
    ("posterize", lambda x: augment.posterize(x, 3), lambda im: ImageOps.posterize(im, 3)),
    ("equalize", augment.equalize, ImageOps.equalize),
])
def test_exact_ops_match_pil(name, ours, pil):
  for seed in range(3):
    u8 = _uint8_image(5, 6, seed)
    if name == "equalize" and seed == 2:
      u8 = (u8 // 64 * 60).astype(np.uint8)  # few levels: PIL's step rounding matters
    np.testing.assert_array_equal(_u8(ours(_f(u8))), _pil(u8, pil), err_msg=name)


def test_autocontrast_matches_pil_up_to_its_truncation():
  for seed in range(3):
    u8 = _uint8_image(5, 6, seed)
    ours = _u8(augment.autocontrast(_f(u8)))
    theirs = _pil(u8, ImageOps.autocontrast)  # PIL truncates lo + (x - lo) * 255 / (hi - lo)
    assert np.abs(ours - theirs).max() <= 1
    assert (ours.min(), ours.max()) == (0, 255)


@pytest.mark.parametrize("name,enhancer", [
    ("color", ImageEnhance.Color), ("contrast", ImageEnhance.Contrast),
    ("brightness", ImageEnhance.Brightness), ("sharpness", ImageEnhance.Sharpness)])
def test_enhance_ops_match_pil(name, enhancer):
  u8 = _uint8_image(9, 7, 3)
  for factor in (0.3, 1.0, 1.7):
    ours = _u8(getattr(augment, name)(_f(u8), factor))
    theirs = _pil(u8, lambda im: enhancer(im).enhance(factor))
    # PIL rounds its degenerate image (and the contrast mean) to uint8 first.
    assert np.abs(ours - theirs).max() <= 2, (name, factor)


def test_solarize_add_and_equalize_constant():
  x = tf.constant([[[0.2, 0.6, 0.9]]])
  np.testing.assert_allclose(augment.solarize_add(x, 0.3).numpy(), [[[0.5, 0.6, 0.9]]],
                             atol=1e-6)
  flat = tf.fill([4, 4, 3], 0.4)
  np.testing.assert_allclose(augment.equalize(flat).numpy(), np.round(0.4 * 255) / 255)


def test_every_op_runs_at_every_magnitude_and_stays_in_range():
  img = _f(_uint8_image(8, 8, 4))
  for name in augment.RANDAUGMENT_OPS:
    for m in (0, 10, 20, 30):
      out = augment.apply_op(name, img, m, -1.0).numpy()
      assert out.shape == (8, 8, 3) and 0.0 <= out.min() and out.max() <= 1.0, (name, m)
  # Magnitude 0 leaves the geometric and enhance ops as identity.
  for name in ("rotate", "shear_x", "translate_y", "color", "sharpness", "solarize_add"):
    np.testing.assert_allclose(augment.apply_op(name, img, 0).numpy(), img.numpy(),
                               atol=1e-6, err_msg=name)


def test_randaugment_deterministic_from_seed():
  img = _f(_uint8_image(16, 16, 5))
  run = lambda s: augment.randaugment(img, tf.constant([s, 0], tf.int64), 2, 15).numpy()
  np.testing.assert_array_equal(run(1), run(1))
  outs = [run(s) for s in range(8)]
  assert len({o.tobytes() for o in outs}) >= 5  # different seeds, different ops


def test_random_erase_box():
  img = tf.zeros([20, 30, 3])
  for s in range(10):
    seed = tf.constant([s, 7], tf.int64)
    out = augment.random_erase(img, seed, 1.0).numpy()
    changed = np.any(out != 0, axis=-1)
    ys, xs = np.nonzero(changed)
    y0, x0, h, w = (int(v) for v in augment.erase_box(20, 30, tf.random.experimental
                                                      .stateless_split(seed, 3)[1]))
    assert changed.sum() == h * w and (ys.min(), xs.min()) == (y0, x0)
    assert (ys.max() - y0 + 1, xs.max() - x0 + 1) == (h, w)
    assert 0.02 * 600 * 0.5 <= h * w <= 600 / 3 * 1.5
  np.testing.assert_array_equal(augment.random_erase(img, seed, 0.0).numpy(), 0.0)


def test_train_preprocessing_with_augment_is_deterministic():
  c = default_config()
  c.input.update(image_size=16, train_augment="random_crop", crop_padding=1, flip=True)
  c.augment.update(randaugment_layers=2, randaugment_magnitude=10, color_jitter=0.4,
                   random_erase=0.5)
  prep = input_pipeline._preprocessing(c)  # pylint: disable=protected-access
  plain = dataclasses.replace(prep, augment=augment.Augment())
  image = tf.constant(np.random.RandomState(0).rand(8, 8, 1).astype(np.float32))
  seed = tf.constant([5, 9], tf.int64)
  a = preprocess.train_image(image, seed, prep).numpy()
  np.testing.assert_array_equal(a, preprocess.train_image(image, seed, prep).numpy())
  assert np.abs(a - preprocess.train_image(image, seed, plain).numpy()).max() > 0.1
  others = [preprocess.train_image(image, tf.constant([s, 9], tf.int64), prep).numpy()
            for s in range(4)]
  assert len({o.tobytes() for o in others}) == 4


# ----------------------------------------------------------------------------
# Mixup / CutMix.


_mix = jax.jit(mixing.mix_batch, static_argnames=(
    "mixup_alpha", "cutmix_alpha", "mix_prob", "switch_prob", "mode"))


def _batch(b=4, h=8, w=8, k=5):
  images = jnp.arange(b, dtype=jnp.float32)[:, None, None, None] * jnp.ones((b, h, w, 3))
  targets = jax.nn.one_hot(jnp.arange(b) % k, k)
  return images, targets


def test_mixup_batch_hand_computed():
  images, targets = _batch()
  mixed, t, lam = _mix(jax.random.PRNGKey(0), images, targets, mixup_alpha=0.4)
  lam0 = float(lam[0])
  np.testing.assert_allclose(lam, lam0)            # one lambda for the batch
  assert 0.0 < lam0 < 1.0
  # Image i is lam * i + (1 - lam) * (3 - i); its label mass is lam on own class.
  for i in range(4):
    np.testing.assert_allclose(mixed[i], lam0 * i + (1 - lam0) * (3 - i), rtol=1e-6)
    np.testing.assert_allclose(t[i, i], lam0, rtol=1e-6)
    np.testing.assert_allclose(t[i, 3 - i], 1 - lam0, rtol=1e-6)
  np.testing.assert_allclose(t.sum(-1), 1.0, rtol=1e-6)


def test_cutmix_box_area_equals_lambda():
  images, targets = _batch(b=4, h=10, w=12)
  for s in range(6):
    for mode in ("batch", "elem"):
      mixed, t, lam = _mix(jax.random.PRNGKey(s), images, targets,
                                       cutmix_alpha=1.0, mode=mode)
      for i in range(4):
        own = np.isclose(np.asarray(mixed[i, ..., 0]), i).mean()
        if i == 3 - i:
          continue
        np.testing.assert_allclose(own, lam[i], rtol=1e-6)   # pixels kept == label mass
        np.testing.assert_allclose(t[i, i], lam[i], rtol=1e-6)
        pasted = np.asarray(mixed[i, ..., 0]) == 3 - i
        ys, xs = np.nonzero(pasted)
        if len(ys):  # a rectangle
          assert pasted.sum() == (np.ptp(ys) + 1) * (np.ptp(xs) + 1)


def test_cutmix_box_hand_computed():
  # lam = 0.75 -> cut ratio 0.5 -> 4x4 box of an 8x8 image, clipped at the border.
  for s in range(5):
    rng = jax.random.PRNGKey(s)
    box = [int(v) for v in mixing.cutmix_box(rng, 8, 8, 0.75)]
    k_y, k_x = jax.random.split(rng)
    cy, cx = int(jax.random.randint(k_y, (), 0, 8)), int(jax.random.randint(k_x, (), 0, 8))
    assert box == [max(cy - 2, 0), min(cy + 2, 8), max(cx - 2, 0), min(cx + 2, 8)]
    mask = mixing.box_mask(box, 8, 8)
    assert float(mask.sum()) == (box[1] - box[0]) * (box[3] - box[2])


@pytest.mark.slow
def test_per_sample_vs_per_batch_and_switch():
  images, targets = _batch(b=8)
  _, _, lam_b = _mix(jax.random.PRNGKey(1), images, targets, mixup_alpha=1.0,
                                 mode="batch")
  _, _, lam_e = _mix(jax.random.PRNGKey(1), images, targets, mixup_alpha=1.0,
                                 mode="elem")
  assert np.ptp(np.asarray(lam_b)) == 0.0 and np.ptp(np.asarray(lam_e)) > 0.05
  # mix_prob 0: nothing mixed.
  mixed, t, lam = _mix(jax.random.PRNGKey(1), images, targets, mixup_alpha=1.0,
                                   cutmix_alpha=1.0, mix_prob=0.0, mode="elem")
  np.testing.assert_array_equal(mixed, images)
  np.testing.assert_array_equal(t, targets)
  # switch_prob 1 with both on: always CutMix (pixels are whole images' values).
  mixed, _, _ = _mix(jax.random.PRNGKey(2), images, targets, mixup_alpha=1.0,
                                 cutmix_alpha=1.0, switch_prob=1.0, mode="elem")
  for i in range(8):
    assert set(np.unique(np.asarray(mixed[i]))) <= {float(i), float(7 - i)}


# ----------------------------------------------------------------------------
# Presets and bad settings.


def test_augreg_presets():
  a = augment.resolve({"preset": "medium2"})
  assert (a.randaugment_layers, a.randaugment_magnitude, a.mixup_alpha) == (2, 15.0, 0.5)
  a = augment.resolve({"preset": "light1"})
  assert (a.randaugment_layers, a.randaugment_magnitude, a.mixup_alpha) == (2, 0.0, 0.0)
  assert augment.resolve({"preset": "none"}) == augment.Augment()
  assert augment.resolve({"preset": "strong2"}).mixup_alpha == 0.8
  c = default_config()
  c.augment.preset = "strong1"
  validate_config(c, 1)


@pytest.mark.parametrize("fields,match", [
    ({"preset": "medium3"}, "medium2"),
    ({"preset": "medium2", "mixup_alpha": 0.2}, "either the preset"),
    ({"mix_mode": "sample"}, "elem"),
    ({"switch_prob": 1.5}, r"\[0, 1\]"),
    ({"cutmix_alpha": -1.0}, "Beta"),
    ({"randaugment_magnitude": 45}, "30"),
])
def test_bad_settings(fields, match):
  c = default_config()
  c.augment.update(fields)
  with pytest.raises(UserError, match=match):
    validate_config(c, 1)


def test_mixing_with_a_task_that_cannot_take_soft_targets():
  c = default_config()
  c.task = "segmentation"
  c.augment.cutmix_alpha = 1.0
  with pytest.raises(UserError, match="classification"):
    validate_config(c, 1)
  c.augment.cutmix_alpha = 0.0
  c.augment.randaugment_layers = 2
  with pytest.raises(UserError, match="masks"):
    validate_config(c, 1)
