"""SimMIM: mask geometry, the masked-pixel L1, the backbones' mask input, a
short run through vitjax.main, the pictures tool and bad inputs."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import run_main
from vitjax.errors import UserError
from vitjax.models import create_model
from vitjax.tasks import simmim

TINY_VIT = dict(depth=1, hidden_size=16, mlp_dim=32, num_heads=2)
TINY_SWIN = dict(embed_dim=8, depths=(1, 1), num_heads=(1, 2), window_size=4, mask_patch_size=8)


def test_block_mask_ratio_exact_and_aligned():
  # 32 px image, mask patch 8 -> 4x4 = 16 blocks; model patch 2 -> 16x16 grid.
  m = np.asarray(simmim.random_block_mask(jax.random.PRNGKey(0), 5, 32, 8, 2, 0.6))
  assert m.shape == (5, 16, 16) and m.dtype == bool
  blocks = m.reshape(5, 4, 4, 4, 4)            # [b, block row, 4 patches, block col, 4]
  first = blocks[:, :, :1, :, :1]
  assert (blocks == first).all()               # every 4x4 block of patches is all-or-none
  assert (first.reshape(5, -1).sum(1) == 10).all()  # ceil(0.6 * 16) per image, exactly
  assert len({m[i].tobytes() for i in range(5)}) > 1  # per-image randomness


def test_l1_only_on_masked_pixels():
  images = jnp.zeros((1, 4, 4, 3)).at[0, :2, :2].set(1.0)   # top-left patch is ones
  rec = jnp.full((1, 4, 4, 3), 0.5).at[0, 2:, 2:].set(7.0)  # unmasked patch badly wrong
  mask = jnp.array([[[True, False], [True, False]]])        # left column of 2x2 patches
  loss, per_image = simmim.masked_l1(images, rec, mask, patch_size=2)
  # masked pixels: 8 pixels x 3 channels, all |0 or 1 - 0.5| = 0.5; bottom-right ignored.
  np.testing.assert_allclose(loss, 0.5, atol=1e-6)
  np.testing.assert_allclose(per_image, [0.5], atol=1e-6)
  rec2 = rec.at[0, 0, 0, 0].set(4.5)                        # a masked pixel off by 4.5
  loss2, _ = simmim.masked_l1(images, rec2, mask, patch_size=2)
  np.testing.assert_allclose(loss2, 0.5 + (3.5 - 0.5) / 24, atol=1e-6)


@pytest.mark.parametrize("name,kw,size,grid", [
    ("vit_quickstart", TINY_VIT, 16, 4),
    ("swin_tiny_patch4_window7_224", dict(TINY_SWIN, patch_size=2, mask_patch_size=None), 16, 8),
])
@pytest.mark.slow
def test_backbone_mask_argument(name, kw, size, grid):
  kw = {k: v for k, v in kw.items() if k != "mask_patch_size"}
  model = create_model(name, num_classes=3, **kw)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, size, size, 3))
  plain = model.init(jax.random.PRNGKey(0), x)
  assert "mask_token" not in plain["params"]          # default names unchanged
  feats = lambda v, x, **kw: model.apply(v, x, **kw)[1]["pre_logits"]  # (the head is 0-init)
  y0 = feats(plain, x)
  none = jnp.zeros((2, grid, grid), bool)
  some = none.at[:, 0, :].set(True)
  masked_vars = model.init(jax.random.PRNGKey(0), x, mask=none)
  assert set(masked_vars["params"]) == set(plain["params"]) | {"mask_token"}
  variables = {"params": dict(plain["params"], mask_token=masked_vars["params"]["mask_token"])}
  y1 = feats(variables, x, mask=none)
  np.testing.assert_allclose(y1, y0, atol=1e-6)        # an empty mask changes nothing
  y2 = feats(variables, x, mask=some)
  assert np.abs(np.asarray(y2 - y0)).max() > 1e-4
  # The masked patches' content no longer matters: only the token is seen there.
  x3 = x.at[:, :size // grid].add(5.0)
  y3 = feats(variables, x3, mask=some)
  np.testing.assert_allclose(y3, y2, atol=1e-5)
  token = jax.tree.map(lambda a: a, variables)
  t = token["params"]["mask_token"]  # (a constant shift would vanish in the LayerNorms)
  token["params"]["mask_token"] = t + jax.random.normal(jax.random.PRNGKey(2), t.shape)
  y4 = feats(token, x, mask=some)
  assert np.abs(np.asarray(y4 - y2)).max() > 1e-4


def test_simmim_model_params_and_reconstruction():
  model = create_model("simmim_swin_base_patch4_window6_192", patch_size=2, **TINY_SWIN)
  assert model.stride == 4
  x = jnp.ones((1, 16, 16, 3))
  v = model.init(jax.random.PRNGKey(0), x)
  plain = create_model("swin_tiny_patch4_window7_224", num_classes=0, patch_size=2,
                       **{k: w for k, w in TINY_SWIN.items() if k != "mask_patch_size"})
  plain_keys = set(plain.init(jax.random.PRNGKey(0), x)["params"])
  assert set(v["params"]) == plain_keys | {"mask_token", "simmim_pred"}
  assert v["params"]["simmim_pred"]["kernel"].shape == (16, 4 * 4 * 3)
  rec, out = model.apply(v, x, mask=jnp.ones((1, 8, 8), bool))
  assert rec.shape == (1, 16, 16, 3) and out["reconstruction"].shape == rec.shape


def test_bad_inputs():
  with pytest.raises(UserError, match=r"mask_ratio=1.0 must be in \(0, 1\)"):
    create_model("simmim_vit_quickstart", mask_ratio=1.0)
  with pytest.raises(UserError, match=r"mask_ratio=0.0 must be in \(0, 1\)"):
    create_model("simmim_vit_quickstart", mask_ratio=0.0)
  with pytest.raises(UserError, match="multiple of the encoder's output stride 4.*use 4 or 8"):
    create_model("simmim_vit_quickstart", mask_patch_size=6)
  with pytest.raises(UserError, match="output stride 32"):
    create_model("simmim_swin_base_patch4_window6_192", mask_patch_size=16)
  with pytest.raises(UserError, match=r"mask_ratio=1.2 must be in \(0, 1\)"):
    create_model("mae_vit_quickstart", mask_ratio=1.2)
  model = create_model("simmim_vit_quickstart", mask_patch_size=12)
  with pytest.raises(UserError, match="does not divide the image size 16.*tile"):
    simmim.check_geometry(16, model)


def test_bad_mask_patch_refused_at_startup(tmp_path):
  p = run_main(str(tmp_path / "w"), "model.mask_patch_size=12", config="configs/simmim_digits.py",
               check=False, timeout=120)
  assert p.returncode != 0 and "does not divide the image size 16" in p.stderr


@pytest.mark.slow
def test_three_steps_and_pictures(tmp_path):
  from vitjax.tools import ssl_pictures  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  w = str(tmp_path / "w")
  run_main(w, "total_steps=3", "model.depth=1", "model.hidden_size=16", "model.mlp_dim=32",
           "model.num_heads=2", "batch_size=16", "eval_batch_size=40", "eval_every_steps=3",
           "log_every_steps=1", config="configs/simmim_digits.py", timeout=300)
  rows = [l for l in open(os.path.join(w, "metrics.jsonl")) if "eval/loss" in l]
  assert rows
  path = ssl_pictures.make_pictures(w, str(tmp_path / "pics"), split="test", num=3)
  img = np.asarray(Image.open(path)).astype(float)
  scale, pad = 96 // 16, 2
  cell = 16 * scale + pad
  assert img.shape == (3 * cell + pad, 3 * cell + pad, 3)
  col = lambda j: img[:, pad + j * cell: pad + j * cell + 16 * scale]
  assert np.abs(col(2) - col(1)).max() > 0      # reconstruction fills the masked patches
  assert np.abs(col(0) - col(1)).max() > 0      # and the masked column hides some


def test_normalize_cells_hand_computed():
  # One channel, 2x2 cells: the top-left cell holds 0, 1, 2, 3 -> mean 1.5,
  # unbiased variance (2.25 + 0.25 + 0.25 + 2.25) / 3 = 5/3.
  x = jnp.zeros((1, 4, 4, 1)).at[0, 0, 0, 0].set(0.).at[0, 0, 1, 0].set(1.)
  x = x.at[0, 1, 0, 0].set(2.).at[0, 1, 1, 0].set(3.)
  x = x.at[0, 2:, 2:, 0].set(5.)                            # a constant cell -> zeros
  y = np.asarray(simmim.normalize_cells(x, 2))
  np.testing.assert_allclose(y[0, :2, :2, 0], (np.array([[0., 1.], [2., 3.]]) - 1.5)
                             / np.sqrt(5 / 3 + 1e-6), rtol=1e-5)
  np.testing.assert_allclose(y[0, 2:, 2:, 0], 0.0, atol=1e-6)
  # Colour channels share a cell's statistics: [0, 2] on each of 2x2 pixels.
  z = np.asarray(simmim.normalize_cells(jnp.tile(jnp.array([0., 2.]), (1, 2, 2, 1)), 2))
  np.testing.assert_allclose(z[0, 0, 0], [-1.0, 1.0] / np.sqrt(8 / 7), rtol=1e-5)


def _task(**task_kwargs):
  import ml_collections  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict(dict(input=dict(image_size=16), model_name="simmim",
                                          task_kwargs=task_kwargs))
  model = create_model("simmim_vit_quickstart", **TINY_VIT)
  return simmim.SimMimTask(config, None, model), model


def test_norm_pix_loss_targets():
  images = jax.random.normal(jax.random.PRNGKey(1), (2, 16, 16, 3)) * 3.0 + 1.0
  plain, model = _task()
  normed, _ = _task(norm_pix_loss=True)
  np.testing.assert_array_equal(plain.targets(images), images)   # default: raw pixels
  t = np.asarray(normed.targets(images)).reshape(2, 4, 4, 4, 4, 3)  # [b, row, 4, col, 4, C]
  np.testing.assert_allclose(t.mean(axis=(2, 4, 5)), 0.0, atol=1e-5)
  np.testing.assert_allclose(t.var(axis=(2, 4, 5), ddof=1), 1.0, rtol=1e-4)
  # The loss compares the reconstruction with the normalised target.
  variables = model.init(jax.random.PRNGKey(0), images[:1])
  batch = {"image": images, "mask": jnp.ones((2,))}
  s_plain = plain.eval_sums(variables["params"], {}, batch)
  s_norm = normed.eval_sums(variables["params"], {}, batch)
  assert abs(float(s_plain["loss"]) - float(s_norm["loss"])) > 1e-3
  mask = jnp.ones((2, 4, 4), bool)
  loss, _ = simmim.masked_l1(normed.targets(images), normed.targets(images), mask, 4)
  assert float(loss) == 0.0


def test_bad_task_kwargs():
  with pytest.raises(UserError, match="not simmim settings.*norm_pix_loss"):
    _task(norm_pix=True)
  with pytest.raises(UserError, match="must be True or False"):
    _task(norm_pix_loss="yes")


def test_pictures_undo_norm_pix_targets():
  from vitjax.tools import ssl_pictures  # pylint: disable=g-import-not-at-top

  class Perfect:  # predicts the normalised target exactly
    mask_patch_size, patch_size, mask_ratio, stride = 4, 4, 0.5, 4

    def apply(self, variables, images, train=False, mask=None):
      del variables, train, mask
      return simmim.normalize_cells(images, 4), {}

  images = jax.random.normal(jax.random.PRNGKey(2), (2, 16, 16, 3))
  _, rec, pix = ssl_pictures.reconstruct("simmim", Perfect(), {}, images,
                                         jax.random.PRNGKey(0), simmim_norm_pix=True)
  assert float(pix.sum()) > 0
  np.testing.assert_allclose(rec, images, atol=1e-4)
  _, raw, _ = ssl_pictures.reconstruct("simmim", Perfect(), {}, images, jax.random.PRNGKey(0))
  assert np.abs(np.asarray(raw) - np.asarray(images)).max() > 0.1
