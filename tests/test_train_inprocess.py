"""Trainer pieces run in-process: BatchNorm state, optimizer masks, schedules."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vitjax import checkpoint as ckpt_lib
from vitjax import optim
from vitjax.config import default_config, model_config
from vitjax.models import create_model, register_model
from vitjax.train import train_and_evaluate


class _TinyBNNet(nn.Module):
  num_classes: int = 10
  width: int = 16

  @nn.compact
  def __call__(self, x, *, train=False):
    x = nn.Conv(self.width, (3, 3))(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    x = nn.relu(x).reshape(x.shape[0], -1)
    logits = nn.Dense(self.num_classes, name="head")(x)
    return logits, {"pre_logits": x}


register_model(lambda **kw: _TinyBNNet(**kw), name="test_tiny_bn_cnn")


def test_model_with_batchnorm_state_trains_and_updates_running_stats(tmp_path):
  c = default_config()
  c.model_name = "test_tiny_bn_cnn"
  c.dataset.name = "digits"
  c.input.update(image_size=8, train_augment="none", flip=False)
  c.batch_size, c.eval_batch_size = 64, 120
  c.total_steps, c.log_every_steps, c.eval_every_steps = 60, 20, 60
  c.optimizer.learning_rate = 1e-2
  c.progress_bar = False
  final = train_and_evaluate(c, str(tmp_path))
  assert final["eval/accuracy"] > 0.5
  params, state = ckpt_lib.load_vitjax_params(str(tmp_path))
  stats = state["batch_stats"]["BatchNorm_0"]
  assert not np.allclose(stats["mean"], 0.0) and not np.allclose(stats["var"], 1.0)


def test_no_weight_decay_on_norms_biases_and_embeddings():
  m = create_model("vit_tiny_patch16_224", depth=1, hidden_size=16, num_heads=2, mlp_dim=32,
                   num_classes=3)
  params = m.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))["params"]
  mask = optim.weight_decay_mask(params)
  assert mask["block_0"]["attn"]["qkv"]["kernel"] and mask["head"]["kernel"]
  assert mask["patch_embed"]["proj"]["kernel"]
  assert not mask["block_0"]["attn"]["qkv"]["bias"]
  assert not mask["block_0"]["norm1"]["scale"] and not mask["norm"]["scale"]
  assert not mask["pos_embedding"] and not mask["cls_token"]


def test_warmup_then_cosine_schedule():
  c = default_config().optimizer
  c.update(learning_rate=1.0, warmup_steps=10, schedule="cosine", end_learning_rate=0.0)
  s = optim.create_schedule(c, 110)
  assert float(s(0)) == 0.0 and float(s(5)) == pytest.approx(0.5)
  assert float(s(10)) == pytest.approx(1.0)
  assert float(s(60)) == pytest.approx(0.5, abs=1e-6)
  assert float(s(110)) == pytest.approx(0.0, abs=1e-6)
  c.schedule = "linear"
  assert float(optim.create_schedule(c, 110)(60)) == pytest.approx(0.5)


def test_sgd_weight_decay_and_clipping_applied():
  c = default_config().optimizer
  c.update(name="sgd", learning_rate=0.1, momentum=0.0, weight_decay=0.5, grad_clip_norm=1.0,
           schedule="constant")
  tx, _ = optim.create_optimizer(c, 10)
  params = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}}
  grads = {"dense": {"kernel": jnp.full((2, 2), 10.0), "bias": jnp.zeros((2,))}}
  updates, _ = tx.update(grads, tx.init(params), params)
  # clipped grad: 10/20 = 0.5 per entry; decayed kernel: +0.5*1; lr 0.1
  np.testing.assert_allclose(updates["dense"]["kernel"], -0.1 * (0.5 + 0.5), rtol=1e-6)
  np.testing.assert_allclose(updates["dense"]["bias"], 0.0)


def test_model_config_lists_overridable_fields():
  mc = model_config("vit_quickstart", hidden_size=32)
  assert mc.hidden_size == 32 and "num_classes" not in mc and "depth" in mc
