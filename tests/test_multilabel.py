"""Multi-label: BCE / mAP / micro & macro F1 against sklearn, per-class
thresholds, the digits_multilabel set, the TFDS multi-hot path, bad settings,
and a short training run."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics

from conftest import run_main
from vitjax.config import default_config
from vitjax.data import digits, digits_multilabel, input_pipeline
from vitjax.errors import UserError
from vitjax.tasks import multilabel as ml
from vitjax.tasks.classification import ClassificationTask


def _fixed(n=60, k=5, seed=0):
  rng = np.random.RandomState(seed)
  labels = (rng.rand(n, k) < 0.35).astype(np.int32)
  labels[0] = 1  # every class has a positive
  # Logits on the bin grid (so quantisation is exact), correlated with labels,
  # with ties.
  step = 2 * ml.LOGIT_RANGE / ml.NUM_BINS
  logits = np.round((labels * 1.5 + rng.randn(n, k)) * 4) / 4
  logits = np.round(logits / step) * step
  return logits.astype(np.float32), labels


def _hist(logits, labels):
  bins = ml.logit_bins(jnp.asarray(logits))
  return np.asarray(ml.score_histograms(bins, jnp.asarray(labels), jnp.ones(len(labels)),
                                        labels.shape[1]))


def test_bce_matches_sklearn():
  logits, labels = _fixed()
  ours = float(jnp.mean(ml.bce_loss(jnp.asarray(logits), jnp.asarray(labels))))
  p = 1 / (1 + np.exp(-logits.astype(np.float64)))
  theirs = metrics.log_loss(labels.ravel(), p.ravel()) * labels.shape[1]
  np.testing.assert_allclose(ours, theirs, rtol=1e-5)


def test_average_precision_matches_sklearn():
  logits, labels = _fixed()
  ap = ml.average_precision(_hist(logits, labels))
  theirs = [metrics.average_precision_score(labels[:, c], logits[:, c])
            for c in range(labels.shape[1])]
  np.testing.assert_allclose(ap, theirs, rtol=1e-9)
  np.testing.assert_allclose(np.mean(ap), metrics.average_precision_score(
      labels, logits, average="macro"), rtol=1e-9)


def test_thresholds_and_f1_match_sklearn():
  logits, labels = _fixed(seed=1)
  hist = _hist(logits, labels)
  thresholds = ml.best_thresholds(hist)
  edges = ml.bin_edges()
  for c in range(labels.shape[1]):
    # Brute force: the best F1 over every "logit >= one of the scores" rule.
    best = max(metrics.f1_score(labels[:, c], logits[:, c] >= t, zero_division=0)
               for t in np.unique(logits[:, c]))
    pred = logits[:, c] >= edges[thresholds[c]]
    np.testing.assert_allclose(metrics.f1_score(labels[:, c], pred), best, rtol=1e-9)
  # Applied to another split: micro / macro F1 as sklearn computes them.
  other_logits, other_labels = _fixed(seed=2)
  micro, macro = ml.f1_at(_hist(other_logits, other_labels), thresholds)
  pred = other_logits >= edges[thresholds][None]
  np.testing.assert_allclose(micro, metrics.f1_score(other_labels, pred, average="micro"),
                             rtol=1e-9)
  np.testing.assert_allclose(macro, metrics.f1_score(other_labels, pred, average="macro",
                                                     zero_division=0), rtol=1e-9)


def test_task_eval_uses_threshold_split_then_eval_split():
  logits_t, labels_t = _fixed(seed=3)
  logits_e, labels_e = _fixed(seed=4)
  c = default_config()
  c.task = "multilabel"
  c.dataset.name = "digits_multilabel"
  info = input_pipeline.DatasetInfo(5, 60, 60, tuple("abcde"), multi_label=True)

  class Fixed:  # a "model" returning the given logits for each part
    def apply(self, variables, images, train=False, rngs=None):
      del variables, train, rngs
      return images[:, 0, 0, :5], {}

  task = ml.MultiLabelTask(c, info, Fixed())
  sums = None
  for part, (lg, lb) in enumerate(((logits_t, labels_t), (logits_e, labels_e))):
    images = np.zeros((60, 1, 1, 5), np.float32)
    images[:, 0, 0] = lg
    batch = dict(image=jnp.asarray(images), label=jnp.asarray(lb),
                 mask=jnp.ones(60, bool), part=jnp.full(60, part))
    s = task.eval_sums({}, {}, batch)
    sums = s if sums is None else {k: sums[k] + s[k] for k in s}
  out = task.eval_summary({k: np.asarray(v) for k, v in sums.items()})
  np.testing.assert_allclose(out["map"], metrics.average_precision_score(labels_e, logits_e),
                             rtol=1e-9)
  thresholds = ml.bin_edges()[ml.best_thresholds(_hist(logits_t, labels_t))]
  pred = logits_e >= thresholds[None]
  np.testing.assert_allclose(out["micro_f1"], metrics.f1_score(labels_e, pred,
                                                               average="micro"), rtol=1e-9)
  np.testing.assert_allclose(out["macro_f1"], metrics.f1_score(
      labels_e, pred, average="macro", zero_division=0), rtol=1e-9)
  np.testing.assert_allclose(out["micro_f1_at_0.5"], metrics.f1_score(
      labels_e, logits_e >= 0, average="micro"), rtol=1e-9)


def test_digits_multilabel_deterministic_and_labels_match_placed_digits():
  images, labels = digits_multilabel.load_split("test")
  assert images.shape == (1000, 16, 16, 1) and labels.shape == (1000, 10)
  assert digits_multilabel.layout("test") == digits_multilabel.layout("test")
  src_images, src_labels = digits.load_split("test")
  layout = digits_multilabel.layout("test")
  for i in range(0, 1000, 37):
    expect = np.zeros(10, np.int32)
    used = set()
    for cell, pick in layout[i]:
      y, x = divmod(cell, 2)
      np.testing.assert_array_equal(images[i, 8 * y:8 * y + 8, 8 * x:8 * x + 8],
                                    src_images[pick])
      expect[src_labels[pick]] = 1
      used.add(cell)
    for cell in set(range(4)) - used:
      y, x = divmod(cell, 2)
      assert not images[i, 8 * y:8 * y + 8, 8 * x:8 * x + 8].any()
    np.testing.assert_array_equal(labels[i], expect)
  assert 1 <= labels.sum(1).min() and labels.sum(1).max() <= 4
  with pytest.raises(UserError, match="'train'"):
    digits_multilabel.load_split("validation")


def test_tfds_sequence_of_classlabel_gives_multi_hot():
  tfds = pytest.importorskip("tensorflow_datasets")
  c = default_config()
  c.dataset.update(name="voc/2007", eval_split="test")
  c.input.image_size = 16
  c.batch_size = c.eval_batch_size = 4
  with tfds.testing.mock_data(num_examples=8):
    info = input_pipeline.get_dataset_info(c)
    assert info.multi_label and info.num_classes == 20
    batch = next(input_pipeline.train_iterator(c))
    assert batch["label"].shape == (4, 20) and set(np.unique(batch["label"])) <= {0, 1}
    batches = list(input_pipeline.eval_iterator(c))
    assert all(b["label"].shape == (4, 20) for b in batches)


def test_task_and_dataset_must_agree():
  c = default_config()
  single = input_pipeline.DatasetInfo(10, 100, 10, tuple("0123456789"))
  multi = input_pipeline.DatasetInfo(10, 100, 10, tuple("0123456789"), multi_label=True)
  c.task = "multilabel"
  with pytest.raises(UserError, match="multi-label dataset"):
    ml.MultiLabelTask(c, single, None)
  c.task = "classification"
  c.dataset.name = "digits_multilabel"
  with pytest.raises(UserError, match="task=multilabel"):
    ClassificationTask(c, multi, None)
  c.task = "multilabel"
  c.task_kwargs.threshold = 0.5
  with pytest.raises(UserError, match="threshold_split"):
    ml.MultiLabelTask(c, multi, None)


@pytest.mark.slow
def test_train_multilabel_digits(tmp_path):
  """A short run (about a minute on a quiet 2-core machine) reaches mAP > 0.8."""
  run_main(str(tmp_path), "total_steps=400", "eval_every_steps=400",
           "checkpoint_every_steps=400", "optimizer.learning_rate=3e-3",
           "model.drop_path_rate=0.0", config="configs/multilabel_digits.py")
  with open(os.path.join(tmp_path, "metrics.jsonl")) as f:
    final = [json.loads(l) for l in f if "eval/map" in l][-1]
  assert final["eval/map"] > 0.8, final
  assert final["eval/micro_f1"] > 0.6 and final["eval/macro_f1"] > 0.6, final
