"""Published weights of every family through one entry point and the trainer.

`vitjax.convert.load(path | hf:<org>/<name>, source='auto')` on a randomly
initialised small HF / timm model, saved as a snapshot, must give the
reference's logits within 1e-4 (fp32) for every family with a converter; the
trainer's `init_from` (same classes, head kept) must give them on the digits
evaluation images, BatchNorm statistics included; with other classes it
fine-tunes and the loss falls (slow). `hf:` resolves offline in the real HF
cache layout; bad input is one UserError each, the workdir left without
checkpoints or metrics.
"""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vitjax import train as train_lib
from vitjax.config import default_config
from vitjax.convert import hub, load
from vitjax.errors import UserError
from oracle import assert_close, randomize

try:
  from test_converter_registry import CASES
  from torchvision_stub import import_timm
except ImportError:  # tests/ imported as a package
  from tests.test_converter_registry import CASES
  from tests.torchvision_stub import import_timm

TOL = 1e-4
PARITY = sorted(k for k in CASES if k[0] != "mae")


class _NoPatch:
  """CASES builders take a monkeypatch only for DiNAT's stubbed kernels."""

  def setattr(self, *args, **kwargs):
    pass


def _snapshot(key, lib, folder, num_labels=None, seed=0, monkeypatch=None):
  """A randomised small reference of `key` (CASES; with `num_labels` classes)
  saved at `folder`; returns (ref, converter kwargs, input size)."""
  import safetensors.torch  # pylint: disable=g-import-not-at-top
  source = key[1]
  ref, cfg, kwargs, size = CASES[key](lib, monkeypatch or _NoPatch())
  if num_labels is not None:
    cfg.num_labels = num_labels
    ref = type(ref)(cfg)
  # A wide classifier: EfficientNet's and MobileViT's logits are not degenerate either.
  randomize(ref, seed, norms=("LayerNorm", "BatchNorm2d", "GroupNorm"), fan_in=True,
            bn_mean_std=0.1, wide=("classifier",), wide_std=0.5)
  if source == "hf":
    ref.save_pretrained(folder, safe_serialization=True)
  else:
    os.makedirs(folder, exist_ok=True)
    safetensors.torch.save_file({k: v.clone().contiguous() for k, v in ref.state_dict().items()},
                                os.path.join(folder, "model.safetensors"))
  return ref, kwargs, size


def _reference_logits(key, ref, x_nchw, torch):
  with torch.no_grad():
    out = ref(torch.tensor(x_nchw)) if key[1] == "timm" else ref(pixel_values=torch.tensor(x_nchw))
  if key[1] == "timm":
    return out.numpy()
  logits = out.class_queries_logits if key[0] == "maskformer" else out.logits
  logits = logits.numpy()
  return logits.transpose(0, 2, 3, 1) if key[0] == "segformer" else logits


def _lib(source, transformers):
  return import_timm() if source == "timm" else transformers


@pytest.mark.parametrize("key", PARITY, ids=[f"{f}-{s}" for f, s in PARITY])
def test_auto_import_gives_the_reference_logits(key, tmp_path, torch, transformers,
                                                monkeypatch):
  lib = _lib(key[1], transformers)
  if key[0] == "nat":  # HF DiNAT on torch stand-ins of natten's old kernels
    try:
      from test_nat import dinat_with_torch_kernels  # pylint: disable=g-import-not-at-top
    except ImportError:
      from tests.test_nat import dinat_with_torch_kernels  # pylint: disable=g-import-not-at-top
    dinat_with_torch_kernels(torch, monkeypatch)
  ref, kwargs, size = _snapshot(key, lib, str(tmp_path / "snap"), monkeypatch=monkeypatch)
  x = np.random.RandomState(1).randn(2, 3, size, size).astype(np.float32)
  want = _reference_logits(key, ref, x, torch)
  out = load(str(tmp_path / "snap"), "auto", **kwargs)
  model = out.create_model()
  got = jax.jit(lambda v, x: model.apply(v, x)[0])(out.variables,
                                                   jnp.asarray(x.transpose(0, 2, 3, 1)))
  assert_close(f"{key[0]}/{key[1]} via load(auto)", want, got, TOL)


def test_auto_recognises_the_family_by_config_or_tensor_names(tmp_path, transformers):
  _snapshot(("mae", "hf"), transformers, str(tmp_path / "mae"))
  assert type(load(str(tmp_path / "mae")).create_model()).__name__ == "MaskedAutoencoder"
  # A bare .safetensors file without config.json: a timm ViT, by its tensor names.
  _snapshot(("vit", "timm"), import_timm(), str(tmp_path / "timm"))
  assert load(str(tmp_path / "timm" / "model.safetensors"), num_heads=2).model_name.startswith(
      "vit_")
  with pytest.raises(UserError, match="num_heads"):  # timm weights do not record it
    load(str(tmp_path / "timm" / "model.safetensors"))
  with pytest.raises(UserError, match="Cannot tell the model family.*Supported.*vit_mae"):
    load(str(tmp_path / "timm" / "model.safetensors"), "hf")


# ----------------------------------------------------------------------------
# The offline Hugging Face cache.

def _cache(tmp_path, monkeypatch, transformers, repo="acme/tiny-vit", revision="0123abcd"):
  """A real-layout HF cache holding a tiny ViT snapshot (blobs + symlinks + refs/main)."""
  cache = tmp_path / "hub"
  folder = cache / ("models--" + repo.replace("/", "--"))
  src = tmp_path / "saved"
  ref, _, _ = _snapshot(("vit", "hf"), transformers, str(src))
  snap = folder / "snapshots" / revision
  os.makedirs(snap)
  os.makedirs(folder / "blobs")
  for name in os.listdir(src):
    blob = folder / "blobs" / f"blob-{name}"
    shutil.copy(src / name, blob)
    os.symlink(os.path.relpath(blob, snap), snap / name)
  os.makedirs(folder / "refs")
  (folder / "refs" / "main").write_text(revision)
  monkeypatch.setenv("HF_HUB_CACHE", str(cache))
  return ref, cache


def test_hf_cache_resolves_offline(tmp_path, monkeypatch, torch, transformers):
  ref, cache = _cache(tmp_path, monkeypatch, transformers)
  x = np.random.RandomState(2).randn(2, 3, 32, 32).astype(np.float32)
  want = _reference_logits(("vit", "hf"), ref, x, torch)
  for spec in ("hf:acme/tiny-vit", "hf:acme/tiny-vit@main", "hf:acme/tiny-vit@0123abcd"):
    out = load(spec)
    got = out.create_model().apply(out.variables, jnp.asarray(x.transpose(0, 2, 3, 1)))[0]
    assert_close(spec, want, got, TOL)
  # HF_HOME/hub when HF_HUB_CACHE is unset.
  monkeypatch.delenv("HF_HUB_CACHE")
  (tmp_path / "home").mkdir()
  os.rename(cache, tmp_path / "home" / "hub")
  monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
  assert hub.cache_dir() == str(tmp_path / "home" / "hub")
  assert load("hf:acme/tiny-vit").model_kwargs["hidden_size"] == 32


def test_missing_hf_model_names_the_folder_and_the_download_command(tmp_path, monkeypatch):
  monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
  with pytest.raises(UserError) as e:
    load("hf:acme/absent-model")
  msg = str(e.value)
  assert str(tmp_path / "empty" / "models--acme--absent-model" / "snapshots") in msg
  assert "huggingface-cli download acme/absent-model" in msg and "snapshot_download" in msg
  with pytest.raises(UserError, match="hf:<org>/<name>"):
    load("hf:not a repo")


# ----------------------------------------------------------------------------
# The trainer's init_from.

def _digits_config(snapshot, out, image_size, **init_from):
  """A digits classification config whose model is the checkpoint's (its kwargs)."""
  c = default_config()
  c.dataset.name = "digits"
  c.model_name = out.model_name
  kw = {k: v for k, v in out.model_kwargs.items() if k != "num_classes"}
  c.model.update(kw)
  c.input.update(image_size=image_size, train_augment="none", flip=False)
  c.batch_size, c.eval_batch_size = 32, 120
  c.total_steps, c.log_every_steps, c.eval_every_steps = 12, 3, 12
  c.checkpoint_every_steps = 1000
  c.progress_bar = False
  c.optimizer.update(learning_rate=2e-3, warmup_steps=0, schedule="constant")
  c.init_from.update(dict(checkpoint=snapshot, source="auto", **init_from))
  return c


def _trainer_init(config):
  """The model and variables that train_and_evaluate starts from (its init and _init_from)."""
  from vitjax.tasks import get_task  # pylint: disable=g-import-not-at-top
  task_cls = get_task(config.task)
  info = task_cls.dataset_info(config)
  model = train_lib.build_model(config, info.num_classes)
  task = task_cls(config, info, model)
  variables = dict(model.init({"params": jax.random.PRNGKey(0)}, task.init_inputs(),
                              train=False))
  params = variables.pop("params")
  params, state = train_lib._init_from(config, params, variables, model)  # pylint: disable=protected-access
  return model, task, {"params": params, **state}


# The trainer path for every classification family with an HF class (ViT fast, the
# rest slow); DiNAT's reference needs natten's kernels patched in (test_nat), MAE and
# the dense heads are covered by their own tests.
TRAINER_CASES = [("vit", "hf"), ("swin", "hf"), ("resnet", "hf"), ("convnext", "hf"),
                 ("efficientnet", "hf"), ("pvt", "hf"), ("pvt_v2", "hf"), ("cvt", "hf"),
                 ("mobilevit", "hf"), ("mobilevitv2", "hf")]


def _ten_classes(key, lib, folder):
  """A snapshot of `key`'s reference with the digits' 10 classes."""
  return _snapshot(key, lib, folder, num_labels=10)


@pytest.mark.parametrize("key", [TRAINER_CASES[0]] + [
    pytest.param(k, marks=pytest.mark.slow) for k in TRAINER_CASES[1:]],
                         ids=[k[0] for k in TRAINER_CASES])
def test_init_from_gives_the_reference_logits_on_the_eval_images(key, tmp_path, torch,
                                                                 transformers):
  snap = str(tmp_path / "snap")
  ref, _, size = _ten_classes(key, transformers, snap)
  config = _digits_config(snap, load(snap), size, reinit_head=False)
  model, task, variables = _trainer_init(config)
  if key[0] == "resnet":  # BatchNorm statistics came along (randomised, not the init's)
    assert "batch_stats" in variables
  batch = next(iter(task.eval_iterator(config)))
  x = np.asarray(batch["image"])
  got = jax.jit(lambda v, x: model.apply(v, x)[0])(variables, jnp.asarray(x))
  want = _reference_logits(key, ref, x.transpose(0, 3, 1, 2), torch)
  assert_close(f"{key[0]} through init_from", want, got, TOL)
  # The trainer's evaluation of that state: the reference's accuracy.
  state = train_lib.TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                               opt_state=None, model_state={k: v for k, v in variables.items()
                                                            if k != "params"},
                               nonfinite_step=jnp.full((), -1, jnp.int32))
  mesh = train_lib.shard_lib.create_mesh(config.sharding.mesh)
  metrics = train_lib.evaluate(train_lib.make_eval_fn(task, train_lib.shard_lib.replicated(mesh)),
                               state, config, mesh, task)
  all_x, all_y, all_m = [], [], []
  for b in task.eval_iterator(config):
    all_x.append(np.asarray(b["image"]))
    all_y.append(np.asarray(b["label"]))
    all_m.append(np.asarray(b.get("mask", np.ones(len(b["label"]), bool))))
  ref_logits = _reference_logits(key, ref, np.concatenate(all_x).transpose(0, 3, 1, 2), torch)
  m = np.concatenate(all_m).astype(bool)
  ref_acc = float(np.mean(ref_logits.argmax(-1)[m] == np.concatenate(all_y)[m]))
  assert abs(metrics["accuracy"] - ref_acc) < 1e-6, (metrics, ref_acc)


@pytest.mark.slow
@pytest.mark.parametrize("key", TRAINER_CASES, ids=[k[0] for k in TRAINER_CASES])
def test_fine_tuning_another_number_of_classes_lowers_the_loss(key, tmp_path, transformers):
  snap = str(tmp_path / "snap")
  _, _, size = _snapshot(key, transformers, snap)  # 5 or 6 classes; the digits have 10
  config = _digits_config(snap, load(snap), size)
  config.total_steps, config.log_every_steps, config.eval_every_steps = 30, 10, 30
  config.optimizer.learning_rate = 3e-3
  workdir = str(tmp_path / "run")
  train_lib.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    losses = [r["train/loss"] for r in map(json.loads, f) if "train/loss" in r]
  assert len(losses) == 3 and losses[-1] < losses[0] - 0.05, losses  # 10-step means


@pytest.mark.slow
def test_new_resolution_and_window_use_the_family_fixes(tmp_path, transformers):
  from vitjax.checkpoint import merge_params  # pylint: disable=g-import-not-at-top
  # ViT at 32 -> 48: the position embedding is resampled (4x4 -> 6x6 patches).
  snap = str(tmp_path / "vit")
  _ten_classes(("vit", "hf"), transformers, snap)
  out = load(snap)
  config = _digits_config(snap, out, 48)
  _, _, variables = _trainer_init(config)
  assert variables["params"]["pos_embedding"].shape == (1, 37, 32)
  # Swin v1, window 4 -> 2: every bias table resampled to (2*2-1)^2 rows; v2: nothing to do.
  for version in (1, 2):
    snap = str(tmp_path / f"swin{version}")
    _ten_classes(("swin", "hf"), transformers, snap) if version == 1 else _swinv2(
        transformers, snap)
    out = load(snap)
    model = out.create_model(window_size=2)
    x = jnp.zeros((1, 64, 64, 3))
    fresh = model.init(jax.random.PRNGKey(0), x)["params"]
    merged = merge_params(fresh, out.params, reinit_head=False, model=model)
    tables = [k for k in jax.tree_util.tree_flatten_with_path(merged)[0]
              if "relative_position_bias_table" in jax.tree_util.keystr(k[0])]
    assert all(np.shape(t) == (9, np.shape(t)[1]) for _, t in tables)
    assert bool(tables) == (version == 1)
    logits, _ = model.apply({"params": merged}, x)
    assert np.all(np.isfinite(logits))


def test_mae_snapshot_fine_tunes_a_vit(tmp_path, transformers):
  """MAE pretraining -> ViT fine-tuning: the encoder loads into a ViT, the decoder is left out."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from vitjax.convert.common import flatten_params  # pylint: disable=g-import-not-at-top
  snap = str(tmp_path / "mae")
  _snapshot(("mae", "hf"), transformers, snap)
  out = load(snap)
  config = _digits_config(snap, out, 16)
  config.model_name = "vit_base_patch16_224"
  config.model = ml_collections.ConfigDict({k: out.model_kwargs[k] for k in (
      "patch_size", "hidden_size", "depth", "num_heads", "mlp_dim", "qkv_bias",
      "layer_norm_eps")})
  _, _, variables = _trainer_init(config)
  got, mae = flatten_params(variables["params"]), flatten_params(out.params)
  assert not any(k.startswith("decoder") for k in got) and "head/kernel" in got
  shared = [k for k in got if not k.startswith("head")]
  assert shared and all(k in mae for k in shared), sorted(set(shared) - set(mae))
  for k in shared:
    np.testing.assert_array_equal(got[k], mae[k], err_msg=k)


def _swinv2(transformers, folder):
  cfg = transformers.Swinv2Config(image_size=64, patch_size=4, window_size=4, depths=[2, 2],
                                  embed_dim=32, num_heads=[2, 4], num_labels=10)
  transformers.Swinv2ForImageClassification(cfg).save_pretrained(folder, safe_serialization=True)


# ----------------------------------------------------------------------------
# Bad input: one clear message each, nothing written to the workdir.

def _assert_refused(config, workdir, match):
  with pytest.raises(UserError, match=match) as e:
    train_lib.train_and_evaluate(config, workdir)
  assert not os.path.exists(os.path.join(workdir, "checkpoints"))
  assert not os.path.exists(os.path.join(workdir, "metrics.jsonl"))
  assert not os.path.exists(os.path.join(workdir, "config.json"))  # a corrected rerun may start
  return str(e.value)


def test_checkpoint_of_another_family_is_refused_naming_both(tmp_path, transformers):
  snap = str(tmp_path / "swin")
  _ten_classes(("swin", "hf"), transformers, snap)
  vit = str(tmp_path / "vit")
  _ten_classes(("vit", "hf"), transformers, vit)
  config = _digits_config(snap, load(vit), 32)  # a ViT config, a Swin checkpoint
  msg = _assert_refused(config, str(tmp_path / "run"), "SwinTransformer")
  assert "VisionTransformer" in msg and config.model_name in msg


def test_pickle_checkpoint_is_refused_with_the_conversion_hint(tmp_path):
  for name in ("pytorch_model.bin", "model.pth", "model.pt"):
    (tmp_path / name).write_bytes(b"not unpickled")
    with pytest.raises(UserError, match="safetensors.torch.save_file") as e:
      load(str(tmp_path / name))
    assert "torch.load" in str(e.value)
  os.remove(tmp_path / "model.pt")
  os.remove(tmp_path / "model.pth")
  with pytest.raises(UserError, match="pickle"):  # a snapshot folder with only a .bin
    load(str(tmp_path))


def test_snapshot_whose_tensors_do_not_match_its_config(tmp_path, transformers):
  snap = tmp_path / "vit"
  _ten_classes(("vit", "hf"), transformers, str(snap))
  cfg = json.loads((snap / "config.json").read_text())
  cfg["image_size"] = 64  # the position embedding is for 32
  (snap / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(UserError, match=r"pos_embedding has shape \(1, 17, 32\).*\(1, 65, 32\)"):
    load(str(snap))


def test_unknown_model_type_lists_the_supported_ones(tmp_path, transformers):
  snap = tmp_path / "vit"
  _ten_classes(("vit", "hf"), transformers, str(snap))
  cfg = json.loads((snap / "config.json").read_text())
  cfg.update(model_type="bert", architectures=["BertModel"])
  (snap / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(UserError, match="'bert'.*Supported.*swin.*convnext|'bert'.*Supported"):
    load(str(snap))


def test_non_head_tensor_of_the_wrong_shape_is_named(tmp_path, transformers):
  snap = str(tmp_path / "vit")
  _ten_classes(("vit", "hf"), transformers, snap)
  out = load(snap)
  config = _digits_config(snap, out, 32)
  config.model.mlp_dim = 48  # the checkpoint's is 64
  msg = _assert_refused(config, str(tmp_path / "run"), "mlp")
  assert "(32, 64)" in msg and "(32, 48)" in msg
