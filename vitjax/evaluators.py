"""Frozen-feature evaluators for any vitjax model: kNN and linear probe.

`extract_features` runs a model (no masking, no dropout) over a split of the
config's dataset and keeps one vector per image: `out['pre_logits']` (the
class token or pooled feature a head would see) or 'mean' (the mean of
`out['encoded']`'s patch tokens, prefix tokens left out; a NHWC map is
averaged over space). `knn_accuracy` is DINO's weighted kNN (Caron et al.
2021: cosine similarity, k=20, votes weighted by exp(sim / 0.07));
`linear_probe_accuracy` trains a multinomial logistic regression with optax
(AdamW, full or mini-batch) on standardised frozen features, as MAE's linear
probe (a parameter-free BatchNorm before the linear layer).
"""

import copy
import logging
from typing import Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vitjax import data as data_lib
from vitjax.errors import UserError

log = logging.getLogger(__name__)
FEATURES = ("pre_logits", "mean")


def pool_features(model, out, feature: str = "pre_logits"):
  """One vector per image from a model's `out` dict (see the module docstring)."""
  if feature == "pre_logits":
    if "pre_logits" not in out:
      raise UserError("This model's outputs have no 'pre_logits'; use --features=mean.")
    return out["pre_logits"]
  if feature == "mean":
    x = out.get("encoded")
    if x is None:
      raise UserError("This model's outputs have no 'encoded'; use --features=pre_logits.")
    if x.ndim == 4:  # a NHWC feature map
      return jnp.mean(x, axis=(1, 2))
    return jnp.mean(x[:, getattr(model, "num_prefix_tokens", 0):], axis=1)
  raise UserError(f"features={feature!r}: use one of {FEATURES}.")


def extract_features(model, variables, config, split: str, feature: str = "pre_logits"
                     ) -> Tuple[np.ndarray, np.ndarray]:
  """(features [N, D] float32, labels [N]) of `split`, in eval preprocessing."""
  cfg = copy.deepcopy(config)
  cfg.unlock() if hasattr(cfg, "unlock") else None
  cfg.dataset.eval_split = split

  @jax.jit
  def features(images):
    _, out = model.apply(variables, images, train=False)
    return pool_features(model, out, feature).astype(jnp.float32)

  feats, labels = [], []
  for batch in data_lib.eval_iterator(cfg):
    keep = np.asarray(batch["mask"], bool)
    f = np.asarray(features(jnp.asarray(batch["image"])))
    feats.append(f[keep])
    labels.append(np.asarray(batch["label"])[keep])
  return np.concatenate(feats), np.concatenate(labels)


def knn_predict(train_feats, train_labels, test_feats, num_classes: int, k: int = 20,
                temperature: float = 0.07, chunk: int = 1024):
  """DINO's weighted kNN: (predicted labels [M], class votes [M, C]).

  Features are L2-normalised; each test vector's k most cosine-similar train
  vectors vote for their labels with weight exp(similarity / temperature).
  """
  train = jnp.asarray(train_feats, jnp.float32)
  train = train / jnp.maximum(jnp.linalg.norm(train, axis=1, keepdims=True), 1e-12)
  onehot = jax.nn.one_hot(jnp.asarray(train_labels), num_classes)
  k = min(k, train.shape[0])

  @jax.jit
  def votes(test):
    test = test / jnp.maximum(jnp.linalg.norm(test, axis=1, keepdims=True), 1e-12)
    sims, idx = jax.lax.top_k(test @ train.T, k)
    weights = jnp.exp(sims / temperature)
    return jnp.einsum("mk,mkc->mc", weights, onehot[idx])

  test = np.asarray(test_feats, np.float32)
  v = np.concatenate([np.asarray(votes(jnp.asarray(test[i:i + chunk])))
                      for i in range(0, len(test), chunk)])
  return v.argmax(axis=1), v


def knn_accuracy(train_feats, train_labels, test_feats, test_labels, num_classes: int,
                 k: int = 20, temperature: float = 0.07) -> float:
  pred, _ = knn_predict(train_feats, train_labels, test_feats, num_classes, k, temperature)
  return float(np.mean(pred == np.asarray(test_labels)))


def linear_probe_accuracy(train_feats, train_labels, test_feats, test_labels,
                          num_classes: int, *, steps: int = 1000, learning_rate: float = 1e-2,
                          weight_decay: float = 1e-4, batch_size: int = 4096,
                          seed: int = 0) -> float:
  """Test accuracy of a softmax regression trained (optax AdamW) on frozen features.

  Features are standardised with the train split's mean and std; mini-batches
  of `batch_size` (the whole train split when smaller), cosine learning rate.
  """
  x = np.asarray(train_feats, np.float32)
  mean, std = x.mean(0), x.std(0) + 1e-6
  x = jnp.asarray((x - mean) / std)
  xt = jnp.asarray((np.asarray(test_feats, np.float32) - mean) / std)
  y = jnp.asarray(train_labels)
  n, d = x.shape
  params = {"w": jnp.zeros((d, num_classes)), "b": jnp.zeros((num_classes,))}
  tx = optax.adamw(optax.cosine_decay_schedule(learning_rate, steps), weight_decay=weight_decay)
  bs = min(batch_size, n)

  def loss_fn(p, xb, yb):
    logits = xb @ p["w"] + p["b"]
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, yb))

  @jax.jit
  def train(params):
    def step(i, carry):
      p, s = carry
      idx = (jax.random.permutation(jax.random.fold_in(jax.random.PRNGKey(seed), i), n)[:bs]
             if bs < n else jnp.arange(n))
      g = jax.grad(loss_fn)(p, x[idx], y[idx])
      updates, s = tx.update(g, s, p)
      return optax.apply_updates(p, updates), s
    return jax.lax.fori_loop(0, steps, step, (params, tx.init(params)))[0]

  params = train(params)
  pred = np.asarray(jnp.argmax(xt @ params["w"] + params["b"], axis=1))
  return float(np.mean(pred == np.asarray(test_labels)))


def probe(model, variables, config, methods=("knn", "linear"), feature: str = "pre_logits",
          k: int = 20, temperature: float = 0.07, **linear_kw) -> Dict[str, float]:
  """Features of the config's train and eval splits -> {'knn_accuracy', 'linear_accuracy'}."""
  info = data_lib.get_dataset_info(config)
  tr_f, tr_y = extract_features(model, variables, config, config.dataset.train_split, feature)
  te_f, te_y = extract_features(model, variables, config, config.dataset.eval_split, feature)
  out = {"num_train": len(tr_y), "num_test": len(te_y), "feature_dim": int(tr_f.shape[1])}
  for m in methods:
    if m == "knn":
      out["knn_accuracy"] = knn_accuracy(tr_f, tr_y, te_f, te_y, info.num_classes, k,
                                         temperature)
    elif m == "linear":
      out["linear_accuracy"] = linear_probe_accuracy(tr_f, tr_y, te_f, te_y,
                                                     info.num_classes, **linear_kw)
    else:
      raise UserError(f"method={m!r}: use 'knn' or 'linear'.")
  return out
