"""MAE: parity with HF ViTMAEForPreTraining (same noise), masking, the encoder
as a ViT for fine-tuning, parameter counts, bad mask ratios."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vitjax.checkpoint import merge_params
from vitjax.convert import load_pretrained
from vitjax.convert.mae import hf_mae_to_vitjax, mae_encoder_to_vit
from vitjax.errors import UserError
from vitjax.models import create_model
from vitjax.models.mae import MaskedAutoencoder, mae_posemb, patchify, unpatchify
from vitjax.models.vit import VisionTransformer
from vitjax.tasks.mae import MaeTask

SIZE, PATCH, BATCH = 16, 4, 3
N = (SIZE // PATCH) ** 2


@pytest.fixture(scope="module")
def hf_mae(torch, transformers):
  """A tiny HF ViTMAEForPreTraining with every trainable tensor re-drawn."""
  cfg = transformers.ViTMAEConfig(
      hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
      decoder_hidden_size=24, decoder_num_hidden_layers=2, decoder_num_attention_heads=3,
      decoder_intermediate_size=40, image_size=SIZE, patch_size=PATCH, mask_ratio=0.75,
      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
  torch.manual_seed(0)
  model = transformers.ViTMAEForPreTraining(cfg).eval()
  # The fixed sin-cos position embeddings, by HF's own code (its post_init
  # leaves them zero in this transformers version).
  model.vit.embeddings.patch_embeddings.projection._is_hf_initialized = False
  model.vit.embeddings.initialize_weights()
  model.decoder.initialize_weights(N)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if not p.requires_grad:
        continue
      if "layernorm" in name or "norm." in name:
        p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * torch.randn_like(p))
      else:
        p.copy_(0.2 * torch.randn_like(p))
  sd = {k: v.numpy() for k, v in model.state_dict().items()}
  return model, cfg, sd


def _inputs(torch):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(BATCH, SIZE, SIZE, 3)).astype(np.float32)
  noise = rng.uniform(size=(BATCH, N)).astype(np.float32)
  return x, noise, torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), torch.from_numpy(noise)


def test_posemb_is_hfs(hf_mae):
  _, _, sd = hf_mae
  np.testing.assert_allclose(mae_posemb(4, 4, 32), sd["vit.embeddings.position_embeddings"],
                             atol=1e-6)
  np.testing.assert_allclose(mae_posemb(4, 4, 24), sd["decoder.decoder_pos_embed"], atol=1e-6)


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_matches_hf(hf_mae, torch, norm_pix_loss):
  model, cfg, sd = hf_mae
  model.config.norm_pix_loss = norm_pix_loss
  x, noise, xt, noise_t = _inputs(torch)
  with torch.no_grad():
    ref = model(pixel_values=xt, noise=noise_t)
  cv = hf_mae_to_vitjax(sd, cfg)
  params, kw = cv.params, cv.model_kwargs
  assert kw["norm_pix_loss"] == norm_pix_loss and kw["decoder_num_heads"] == 3
  mae = MaskedAutoencoder(**kw)
  pred, out = jax.jit(lambda p, x, n: mae.apply({"params": p}, x, noise=n))(params, x, noise)
  np.testing.assert_array_equal(out["mask"], ref.mask.numpy())
  np.testing.assert_array_equal(out["ids_restore"], ref.ids_restore.numpy())
  np.testing.assert_allclose(pred, ref.logits.numpy(), atol=1e-4, rtol=0)
  np.testing.assert_allclose(out["loss"], ref.loss.item(), atol=1e-4, rtol=1e-5)
  assert np.max(np.abs(np.asarray(pred) - ref.logits.numpy())) > 0  # not trivially equal
  # Patches in HF's order, and back.
  hf_patches = model.patchify(xt).numpy()
  np.testing.assert_array_equal(patchify(x, PATCH), hf_patches)
  np.testing.assert_array_equal(unpatchify(patchify(x, PATCH), (4, 4), PATCH), x)


def test_encoder_is_a_vit(hf_mae, torch):
  """The MAE encoder, exported or loaded by init_from, computes HF's encoder."""
  model, cfg, sd = hf_mae
  x, _, xt, _ = _inputs(torch)
  cfg.mask_ratio = 0.0
  try:  # no masking, identity order: HF's encoder sees every patch
    with torch.no_grad():
      ref = model.vit(pixel_values=xt, noise=torch.arange(N).float()[None].repeat(BATCH, 1))
  finally:
    cfg.mask_ratio = 0.75
  ref = ref.last_hidden_state.numpy()
  cv = hf_mae_to_vitjax(sd, cfg)
  params, kw = cv.params, cv.model_kwargs
  _, out = jax.jit(MaskedAutoencoder(**kw).apply)({"params": params}, x)  # no rng: no masking
  np.testing.assert_allclose(out["encoded"], ref, atol=1e-4, rtol=0)

  vit_params, vit_kw = mae_encoder_to_vit(params, kw)
  vit = VisionTransformer(**vit_kw)
  encode = jax.jit(lambda p: vit.apply({"params": p}, x)[1]["encoded"])
  np.testing.assert_allclose(encode(vit_params), ref, atol=1e-4, rtol=0)

  # init_from a vitjax MAE workdir: merge_params into a ViT with a new head.
  vit10 = VisionTransformer(**dict(vit_kw, num_classes=10))
  fresh = jax.eval_shape(vit10.init, jax.random.PRNGKey(0), x[:1])["params"]
  fresh = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), fresh)
  merged = merge_params(fresh, params)
  assert "decoder" not in merged and not np.any(merged["head"]["kernel"])  # a new head
  merged.pop("head")
  np.testing.assert_allclose(encode(merged), ref, atol=1e-4, rtol=0)

  # init_from a HF MAE checkpoint (source='hf'): the decoder is dropped.
  hf_params, hf_kw = load_pretrained(sd, source="hf", config=cfg)
  assert {k: hf_kw[k] for k in vit_kw} == vit_kw
  np.testing.assert_allclose(encode(hf_params), ref, atol=1e-4, rtol=0)


def test_masking_from_rng_and_fixed_posemb(hf_mae):
  _, cfg, sd = hf_mae
  cv = hf_mae_to_vitjax(sd, cfg)
  params, kw = cv.params, cv.model_kwargs
  mae = MaskedAutoencoder(**kw)
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, SIZE, SIZE, 3)), jnp.float32)

  task = MaeTask(_tiny_mae_config(), None, mae)
  batch = {"image": x, "mask": jnp.array([True, False])}

  @jax.jit
  def everything(p):  # one compilation
    run = lambda k: mae.apply({"params": p}, x, rngs={"masking": jax.random.PRNGKey(k)})[1]
    grads = jax.grad(lambda p: task.train_loss(p, {}, batch, jax.random.PRNGKey(1))[0])(p)
    return (run(1), run(1), run(2), grads, mae.apply({"params": p}, x)[1],
            task.eval_sums(p, {}, batch))

  a, b, c, grads, plain, sums = everything(params)
  np.testing.assert_array_equal(a["mask"].sum(1), [N - N // 4] * 2)
  np.testing.assert_array_equal(a["mask"], b["mask"])
  assert not np.array_equal(a["mask"], c["mask"])
  assert a["encoded"].shape == (2, 1 + N // 4, 32)
  # The position embeddings are parameters that never train.
  assert not np.any(grads["pos_embedding"]) and not np.any(grads["decoder"]["pos_embedding"])
  assert np.any(grads["cls_token"]) and np.any(grads["decoder"]["mask_token"])
  # No noise, no rng: the encoder sees the whole image; there is no loss.
  assert "loss" not in plain and plain["feature_map"].shape == (2, 4, 4, 32)
  # The 'mae' task: eval sums over the valid rows (the second is padding).
  assert float(sums["count"]) == 1.0 and 0 < float(sums["loss"]) < 100


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.5, 1.5])
def test_bad_mask_ratio(ratio):
  with pytest.raises(UserError, match=r"mask_ratio.*\(0, 1\).*0\.75"):
    create_model("mae_vit_quickstart", mask_ratio=ratio)


# Whole pretraining models: HF ViTMAEForPreTraining's counts for the
# facebook/vit-mae-{base,large,huge} configs (fixed sin-cos embeddings
# included). Encoders: 86M / 304M / 632M (MAE paper; ViT paper Table 1).
COUNTS = {"mae_vit_base_patch16": (111_907_840, 86e6),
          "mae_vit_large_patch16": (329_541_888, 304e6),
          "mae_vit_huge_patch14": (657_074_508, 632e6)}


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_param_counts(name):
  model = create_model(name)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3))))
  total = sum(x.size for x in jax.tree.leaves(shapes["params"]))
  decoder = sum(x.size for x in jax.tree.leaves(shapes["params"]["decoder"]))
  assert total == COUNTS[name][0]
  assert abs((total - decoder) / COUNTS[name][1] - 1) < 0.01


def _tiny_mae_config(**model):
  from vitjax.config import digits_recipe  # pylint: disable=g-import-not-at-top
  c = digits_recipe("mae_vit_quickstart", hidden_size=16, depth=1, num_heads=2, mlp_dim=16,
                    decoder_hidden_size=8, decoder_depth=1, decoder_num_heads=2,
                    decoder_mlp_dim=8, **model)
  c.task = "mae"
  c.batch_size, c.total_steps, c.log_every_steps = 32, 2, 1
  c.eval_every_steps = c.checkpoint_every_steps = 2
  return c


def test_bad_config_stops_the_trainer_at_start_up(tmp_path):
  """A bad mask ratio or a non-MAE model with task='mae': UserError before compiling."""
  from vitjax.train import train_and_evaluate  # pylint: disable=g-import-not-at-top
  with pytest.raises(UserError, match=r"mask_ratio=1\.5 must be in \(0, 1\)"):
    train_and_evaluate(_tiny_mae_config(mask_ratio=1.5), str(tmp_path / "bad"))
  assert not os.path.exists(tmp_path / "bad" / "checkpoints")
  c = _tiny_mae_config()
  c.model_name, c.model = "vit_quickstart", {}
  with pytest.raises(UserError, match="masked-autoencoder model"):
    train_and_evaluate(c, str(tmp_path / "vit"))
