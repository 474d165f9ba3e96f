"""Frozen-feature evaluators: DINO's weighted kNN vote (hand-computed cases),
the linear probe, feature pooling and the probe tool on a workdir."""

import json
import os

import numpy as np
import pytest

from vitjax import evaluators
from vitjax.errors import UserError


def test_knn_vote_weights_by_similarity():
  # One neighbour of class 0 at cosine 1, two of class 1 at cosine 0.8.
  train = np.array([[1.0, 0.0], [0.8, 0.6], [0.8, -0.6]])
  labels = np.array([0, 1, 1])
  test = np.array([[2.0, 0.0]])  # cosine: the length does not matter
  pred, votes = evaluators.knn_predict(train, labels, test, 2, k=3, temperature=0.07)
  np.testing.assert_allclose(votes, [[np.exp(1 / 0.07), 2 * np.exp(0.8 / 0.07)]], rtol=1e-5)
  assert pred[0] == 0  # exp(14.29) > 2 exp(11.43): the closest one outvotes two
  # At temperature 1 the two votes win: e^1 = 2.72 < 2 e^0.8 = 4.45.
  pred, votes = evaluators.knn_predict(5 * train, labels, test, 2, k=3, temperature=1.0)
  np.testing.assert_allclose(votes, [[np.e, 2 * np.exp(0.8)]], rtol=1e-5)
  assert pred[0] == 1


def test_knn_only_k_neighbours_vote():
  train = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
  labels = np.array([2, 1, 1, 1])
  test = np.array([[1.0, 0.2], [-1.0, -0.1]])
  # k=1: the nearest alone; k=2 for the first: (1,0) [class 2] and (0,1) [class 1].
  pred, _ = evaluators.knn_predict(train, labels, test, 3, k=1, temperature=0.07)
  np.testing.assert_array_equal(pred, [2, 1])
  _, votes = evaluators.knn_predict(train, labels, test[:1], 3, k=2, temperature=0.5)
  c = 1 / np.sqrt(1.04)  # |(1, 0.2)|^-1
  np.testing.assert_allclose(votes, [[0, np.exp(0.2 * c / 0.5), np.exp(c / 0.5)]], rtol=1e-5)
  assert evaluators.knn_accuracy(train, labels, test, [2, 2], 3, k=1) == 0.5
  # k larger than the train set: every train vector votes.
  _, votes = evaluators.knn_predict(train, labels, test[:1], 3, k=20, temperature=1.0)
  assert votes.sum() == pytest.approx(sum(np.exp(train @ test[0] * c)), rel=1e-5)


def test_linear_probe_separates():
  rng = np.random.default_rng(0)
  centers = rng.normal(size=(3, 8)) * 3
  y = rng.integers(0, 3, size=300)
  x = centers[y] + rng.normal(size=(300, 8))
  acc = evaluators.linear_probe_accuracy(x[:200], y[:200], x[200:], y[200:], 3, steps=200)
  assert acc > 0.95
  shuffled = evaluators.linear_probe_accuracy(x[:200], rng.permutation(y[:200]), x[200:],
                                              y[200:], 3, steps=200)
  assert shuffled < 0.7  # can fail: labels carry the signal, not the probe


def test_pool_features():
  class Model:
    num_prefix_tokens = 1
  out = {"encoded": np.array([[[100.0], [1.0], [3.0]]]), "pre_logits": np.array([[7.0]])}
  np.testing.assert_allclose(evaluators.pool_features(Model(), out, "mean"), [[2.0]])
  np.testing.assert_allclose(evaluators.pool_features(Model(), out, "pre_logits"), [[7.0]])
  fmap = {"encoded": np.arange(8.0).reshape(1, 2, 2, 2)}
  np.testing.assert_allclose(evaluators.pool_features(object(), fmap, "mean"), [[3.0, 4.0]])
  with pytest.raises(UserError, match="features"):
    evaluators.pool_features(Model(), out, "max")


@pytest.mark.slow
def test_probe_tool_on_a_workdir(tmp_path):
  """A workdir's config.json (an MAE on the digits) -> features -> kNN + linear."""
  from vitjax.tools.probe import load_run  # pylint: disable=g-import-not-at-top
  import importlib.util  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  spec = importlib.util.spec_from_file_location("c", os.path.join(root, "configs",
                                                                   "mae_digits.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config()
  c.model.update(hidden_size=16, depth=1, num_heads=2, mlp_dim=16, decoder_depth=1,
                 decoder_hidden_size=8, decoder_num_heads=2, decoder_mlp_dim=8)
  (tmp_path / "config.json").write_text(c.to_json_best_effort())
  with pytest.raises(UserError, match="checkpoint"):
    load_run(str(tmp_path))
  config, model, variables = load_run(str(tmp_path), random_init=True)
  r = evaluators.probe(model, variables, config, feature="mean", steps=50)
  assert (r["num_train"], r["num_test"], r["feature_dim"]) == (1437, 360, 16)
  assert 0.3 < r["knn_accuracy"] <= 1.0 and 0.3 < r["linear_accuracy"] <= 1.0
  json.dumps(r)
