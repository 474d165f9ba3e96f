"""The backbone contract (vitjax/models/features.py): every backbone's declared
feature levels match what it returns, `select_features` picks maps by index or
stride, layer-wise lr decay and freeze-by-depth follow each family's declared
block order, and the dense heads train on any registered backbone by name."""

import importlib.util
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import ROOT, vitjax_models
from vitjax import optim
from vitjax.config import default_config
from vitjax.errors import UserError
from vitjax.models import create_model, list_models
from vitjax.models.features import (FeatureLevel, create_backbone, feature_levels,
                                    layer_groups, select_features, select_levels)

DENSE_HEADS = ("detr_", "deformable_detr_", "conditional_detr_", "maskformer_")

# One small member of every backbone class (the fast lane); the slow test walks
# every registered name.
REPRESENTATIVES = (
    "resnet18", "convnext_tiny", "swin_tiny_patch4_window7_224", "swinv2_tiny_window8_256",
    "focal_tiny_srf", "nat_mini", "dinat_mini", "pvt_tiny", "pvt_v2_b0", "segformer_b0",
    "cvt_13", "mobilevit_xxs", "mobilevitv2_050", "efficientnet_b0", "vit_small_r26_s32_224",
    "crossvit_tiny_240", "lvvit_t", "vit_tiny_patch16_224", "deit_tiny_distilled_patch16_224",
    "dino_vit_quickstart", "moco_v3_vit_quickstart", "mae_vit_quickstart",
    "simmim_vit_quickstart", "simmim_swin_base_patch4_window6_192")

HIERARCHICAL = ("resnet18", "convnext_tiny", "swin_tiny_patch4_window7_224", "focal_tiny_srf",
                "nat_mini", "dinat_mini", "pvt_tiny", "pvt_v2_b0", "segformer_b0", "cvt_13",
                "mobilevit_xxs", "efficientnet_b0", "vit_small_r26_s32_224",
                "crossvit_tiny_240")


def _size(name):
  """A native input side of `name`."""
  if "mobilevit" in name:
    return 256
  return int(name[-3:]) if name[-3:] in ("192", "240", "256", "384") else 224


_CACHE = {}


def _traced(name):
  """(model, abstract params, abstract out) at the model's native size."""
  if name not in _CACHE:
    m = create_model(name)
    x = jax.ShapeDtypeStruct((1, _size(name), _size(name), 3), jnp.float32)
    v = jax.eval_shape(m.init, jax.random.PRNGKey(0), x)
    _, out = jax.eval_shape(m.apply, v, x)
    _CACHE[name] = (m, v["params"], out)
  return _CACHE[name]


def _check_levels(name):
  m, _, out = _traced(name)
  s = _size(name)
  levels = feature_levels(m)
  assert all(isinstance(lv, FeatureLevel) for lv in levels)
  strides = [lv.stride for lv in levels]
  assert strides == sorted(strides), f"{name}: levels not ordered fine to coarse"
  got = [(lv.name, tuple(out[lv.name].shape)) for lv in levels]
  want = [(lv.name, (1, s // lv.stride, s // lv.stride, lv.channels)) for lv in levels]
  assert got == want, name


def test_every_registered_model_is_a_backbone_or_a_dense_head():
  for name in vitjax_models():
    m = create_model(name)
    is_head = name.startswith(DENSE_HEADS)
    assert hasattr(m, "feature_levels") != is_head, name
    assert hasattr(m, "layer_groups") != is_head, name
  assert set(REPRESENTATIVES) <= set(list_models())


@pytest.mark.parametrize("name", REPRESENTATIVES)
def test_declared_levels_match_the_outputs(name):
  _check_levels(name)


@pytest.mark.slow
def test_declared_levels_match_the_outputs_for_every_name():
  for name in vitjax_models():
    if not name.startswith(DENSE_HEADS):
      _check_levels(name)
      _CACHE.pop(name, None)


def test_contract_table():
  """The strides the module docstring promises, per family."""
  strides = lambda n: [lv.stride for lv in feature_levels(create_model(n))]  # noqa: E731
  assert strides("resnet50") == [4, 8, 16, 32]
  assert strides("mobilevit_s") == [2, 4, 8, 16, 32]
  assert strides("efficientnet_b0") == [2, 4, 8, 16, 16, 32, 32]
  assert strides("vit_base_patch16_224") == [16]
  assert strides("vit_base_r50_s16_224") == [4, 8, 16, 16]
  assert feature_levels(create_model("resnet18", small_stem=True))[0].stride == 1
  with pytest.raises(UserError, match="token merging"):
    feature_levels(create_model("vit_tiny_patch16_224", tome_r=2))
  with pytest.raises(UserError, match="declares no feature levels"):
    feature_levels(create_model("detr_tiny"))


def test_select_features_by_stride_and_index():
  m, _, out = _traced("efficientnet_b0")
  maps = select_features(m, out, strides=(8, 16, 32))
  assert [x.shape[1] for x in maps] == [28, 14, 7]
  assert maps[1] is out["stage_4"] and maps[2] is out["stage_6"]  # the deeper of a shared stride
  assert [lv.name for lv in select_levels(m)] == ["stage_0", "stage_1", "stage_2", "stage_4",
                                                  "stage_6"]
  assert len(select_features(m, out, levels="all")) == 7
  assert select_features(m, out, levels=(-1, "stage_3"))[1] is out["stage_3"]
  with pytest.raises(UserError, match=r"no feature map at stride 64; its strides are "
                                      r"\[2, 4, 8, 16, 32\]"):
    select_features(m, out, strides=(32, 64))
  with pytest.raises(UserError, match="7 feature levels"):
    select_levels(m, levels=(7,))
  vit, _, vout = _traced("vit_tiny_patch16_224")
  assert select_features(vit, vout, strides=(16,))[0] is vout["feature_map"]
  with pytest.raises(UserError, match="stride 8"):
    select_levels(vit, strides=(8,))


@pytest.mark.parametrize("name", HIERARCHICAL)
def test_layer_decay_per_block(name):
  """Every declared block exists; multipliers grow with depth: decay^(L + 1)
  for the embeddings, decay^(L + 1 - l) for block l, 1 for the head."""
  m, params, _ = _traced(name)
  ids, num = optim.layer_ids(params, m)
  groups = layer_groups(m)
  assert num == len(groups) - 1 >= 2
  tree, _ = optim.layer_tree(params, m)
  scales = optim.layer_decay_scales(params, 0.5, m)
  per_block = {}
  for lid, s in zip(jax.tree.leaves(tree), jax.tree.leaves(scales)):
    assert s == 0.5 ** (num + 1 - lid)
    per_block[lid] = s
  print(f"\n{name}: L={num}, lr multiplier per layer id "
        + ", ".join(f"{i}:{per_block[i]:.3g}" for i in sorted(per_block)))
  assert set(range(1, num + 1)) <= set(per_block)  # every block owns parameters
  assert per_block[num + 1] == 1.0  # head / final norm
  vals = [per_block[i] for i in sorted(per_block)]
  assert vals == sorted(vals)


def test_nat_and_crossvit_block_order():
  nat, params, _ = _traced("nat_mini")
  ids, num = optim.layer_ids(params, nat)
  assert num == 3 + 4 + 6 + 5
  assert ids["tokenizer_conv0"] == ids["tokenizer_norm"] == 0
  assert ids["level_0_block_2"] == 3 and ids["level_1_downsample"] == ids["level_1_block_0"] == 4
  assert ids["norm"] == ids["head"] == num + 1
  cv, params, _ = _traced("crossvit_tiny_240")
  ids, num = optim.layer_ids(params, cv)
  assert num == 3 and ids["patch_embed_1"] == ids["cls_token_0"] == 0
  assert [ids[f"block_{i}"] for i in range(3)] == [1, 2, 3]
  assert ids["head_0"] == ids["norm_1"] == 4
  hyb, params, _ = _traced("vit_small_r26_s32_224")
  tree, num = optim.layer_tree(params, hyb)
  assert tree["backbone"]["stem_conv"]["kernel"] == 0 and tree["vit"]["block_0"]["norm1"][
      "scale"] == 1 and tree["vit"]["head"]["kernel"] == num + 1


def test_freeze_depth():
  nat, params, _ = _traced("nat_mini")
  scales = optim.depth_scales(params, nat, freeze_depth=4)
  assert scales["tokenizer_conv0"]["kernel"] == 0 and scales["level_0_block_2"]["mlp"][
      "fc1"]["kernel"] == 0
  assert scales["level_1_downsample"]["kernel"] == 0 and scales["level_1_block_0"]["mlp"][
      "fc1"]["kernel"] == 0
  assert scales["level_1_block_1"]["mlp"]["fc1"]["kernel"] == 1 and scales["head"]["kernel"] == 1
  with pytest.raises(UserError, match="freeze_depth=99"):
    optim.depth_scales(params, nat, freeze_depth=99)


def test_freeze_depth_holds_blocks_in_a_train_step():
  """SGD through create_optimizer: frozen blocks stay, the others move."""
  m = create_model("nat_mini", embed_dim=8, depths=(1, 1), num_heads=(1, 2), kernel_size=3,
                   num_classes=3)
  x = jnp.asarray(np.random.RandomState(0).randn(2, 32, 32, 3), jnp.float32)
  params = m.init(jax.random.PRNGKey(0), x)["params"]
  c = default_config().optimizer
  c.update(name="sgd", learning_rate=0.1, momentum=0.0, weight_decay=0.0, grad_clip_norm=0.0,
           schedule="constant", freeze_depth=1)
  tx, _ = optim.create_optimizer(c, 10, m)
  loss = lambda p: jnp.sum(m.apply({"params": p}, x)[0] ** 2)  # noqa: E731
  updates, _ = tx.update(jax.grad(loss)(params), tx.init(params), params)
  moved = jax.tree.map(lambda u: float(jnp.abs(u).max()), updates)
  assert moved["tokenizer_conv0"]["kernel"] == 0 and moved["level_0_block_0"]["mlp"]["fc1"][
      "kernel"] == 0
  assert moved["level_1_block_0"]["mlp"]["fc1"]["kernel"] > 0 and moved["head"]["kernel"] > 0
  with pytest.raises(ValueError, match="need the model"):
    optim.create_optimizer(c, 10)


def test_simmim_output_stride_from_the_contract():
  from vitjax.models.simmim import output_stride  # pylint: disable=g-import-not-at-top
  assert output_stride(create_model("swin_tiny_patch4_window7_224")) == 32
  assert output_stride(create_model("vit_base_patch16_224")) == 16
  assert create_model("simmim_swin_base_patch4_window6_192").stride == 32


# Dense heads on backbones given by registry name, with no code change: tiny
# overrides for a 64 px input.
_BACKBONES = {
    "resnet18": dict(stage_depths=(1, 1), stage_widths=(16, 32), stem_width=16),
    "swin_tiny_patch4_window7_224": dict(embed_dim=16, depths=(1, 1), num_heads=(1, 2),
                                         window_size=4, drop_path_rate=0.0),
    "convnext_tiny": dict(depths=(1, 1), widths=(16, 32), drop_path_rate=0.0),
    "pvt_v2_b0": dict(embed_dims=(32, 32), depths=(1, 1), num_heads=(1, 1), mlp_ratios=(2, 2),
                      sr_ratios=(2, 1), patch_sizes=(7, 3), strides=(4, 2),
                      drop_path_rate=0.0),
    # A plain ViT: ViTDet's simple feature pyramid on its stride-16 map
    # (automatic for MaskFormer / Deformable DETR; asked for here so that
    # DETR reads the pyramid's stride-32 map too).
    "vit_tiny_patch16_224": dict(hidden_size=32, depth=1, num_heads=2, mlp_dim=64,
                                 simple_pyramid=dict(out_channels=32, top_maxpool=False)),
}


def _config(name, arg):
  """configs/<name>.py's get_config(arg)."""
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", name + ".py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


def _train(config, backbone, tmp_path):
  from vitjax.train import train_and_evaluate  # pylint: disable=g-import-not-at-top
  config.model = ml_collections.ConfigDict(dict(
      config.model.to_dict(), backbone=backbone, backbone_kwargs=_BACKBONES[backbone]))
  config.total_steps = 2
  config.eval_every_steps = 2
  config.checkpoint_every_steps = 2
  metrics = train_and_evaluate(config, str(tmp_path / backbone))
  assert metrics and all(np.isfinite(v) for v in metrics.values()
                         if isinstance(v, (int, float)))
  return metrics


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["resnet18", "swin_tiny_patch4_window7_224",
                                      "convnext_tiny", "vit_tiny_patch16_224"])
def test_detr_trains_on_a_backbone_by_name(backbone, tmp_path):
  _train(_config("detr_shapes", "tiny"), backbone, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["swin_tiny_patch4_window7_224", "vit_tiny_patch16_224"])
def test_deformable_detr_trains_on_a_backbone_by_name(backbone, tmp_path):
  _train(_config("deformable_detr_shapes", "tiny"), backbone, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["resnet18", "swin_tiny_patch4_window7_224", "pvt_v2_b0",
                                      "vit_tiny_patch16_224"])
def test_maskformer_trains_on_a_backbone_by_name(backbone, tmp_path):
  config = _config("maskformer_shapes", "tiny")
  config.model.stage_norms = False
  config.task_kwargs.num_train_images = 16
  config.task_kwargs.num_eval_images = 8
  config.batch_size = 8
  config.eval_batch_size = 8
  _train(config, backbone, tmp_path)


def test_plain_vit_gets_the_simple_pyramid():
  """MaskFormer asks for several strides: a ViT gets the pyramid (8, 16, 32,
  64 from its stride-16 map) at any input size; refused only when the user
  turns the pyramid off."""
  m = create_model("maskformer_tiny", backbone="vit_tiny_patch16_224",
                   backbone_kwargs=dict(depth=1))
  x = jnp.zeros((1, 100, 150, 3))
  v = jax.eval_shape(m.init, jax.random.PRNGKey(0), x)
  assert set(v["params"]["backbone"]) == {"body", "pyramid"}
  _, out = jax.eval_shape(m.apply, v, x)
  assert [out[f"stage_{i}"].shape[1:3] for i in range(4)] == [(12, 18), (6, 9), (3, 4), (2, 2)]
  off = create_model("maskformer_tiny", backbone="vit_tiny_patch16_224",
                     backbone_kwargs=dict(depth=1, simple_pyramid=False))
  with pytest.raises(UserError, match="one feature stride"):
    jax.eval_shape(off.init, jax.random.PRNGKey(0), x)
  with pytest.raises(UserError, match="scale_factors"):
    create_backbone("vit_tiny_patch16_224", dict(simple_pyramid=dict(scale_factors=(3.0,))))
  # DETR reads one map: a ViT feeds its own stride-16 map unless asked.
  assert feature_levels(create_backbone("vit_tiny_patch16_224"))[0].stride == 16
