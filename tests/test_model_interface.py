"""The interface every registered model shares, checked over `list_models()`.

A model is a flax module called as `model.apply(variables, images, train=...)`
with NHWC float images; it returns `(logits, out)`, `out` a dict of named
intermediates; it runs in bfloat16 when built with `dtype=jnp.bfloat16`;
dropout and stochastic depth act only with `train=True`, and BatchNorm
statistics change only with `train=True`. Feature levels are checked in
tests/test_features.py.

Fast lane: one tiny model per model class, traced only (`TINY`; a new family
adds its row there, `test_every_model_class_has_a_tiny_row` fails until it
does). Slow lane: every registered name at its own input size, shapes only
(`jax.eval_shape`), with the exact parameter counts of `EXACT`; a few tiny
models run for real.
"""

import fnmatch
import functools

import jax
from jax.extend import core as jax_core
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import vitjax_models
from vitjax.models import create_model, list_models

# Model class -> (registered name, tiny overrides, input side). Rates are
# zero here; the tests set them.
TINY = {
    "VisionTransformer": ("vit_tiny_patch16_224", dict(
        patch_size=4, hidden_size=16, depth=2, num_heads=2, mlp_dim=32, num_classes=3,
        head_zero_init=False), 16),
    "DinoViT": ("dino_vit_quickstart", dict(
        hidden_size=16, depth=2, num_heads=2, mlp_dim=32, out_dim=8,
        head_hidden_dim=16, head_bottleneck_dim=4), 16),
    "MocoViT": ("moco_v3_vit_quickstart", dict(
        hidden_size=16, depth=2, num_heads=2, mlp_dim=32, proj_dim=8,
        head_hidden_dim=16), 16),
    "MaskedAutoencoder": ("mae_vit_base_patch16", dict(
        patch_size=4, hidden_size=16, depth=2, num_heads=2, mlp_dim=32,
        decoder_hidden_size=8, decoder_depth=1, decoder_num_heads=2, decoder_mlp_dim=16), 16),
    "SimMIM": ("simmim_vit_quickstart", dict(
        hidden_size=16, depth=2, num_heads=2, mlp_dim=32), 16),
    "HybridVisionTransformer": ("vit_small_r26_s32_224", dict(
        image_size=32, stage_depths=(1, 1), stem_width=32, hidden_size=16, depth=1,
        num_heads=2, mlp_dim=32, num_classes=3, head_zero_init=False), 32),
    "SwinTransformer": ("swin_tiny_patch4_window7_224", dict(
        patch_size=2, embed_dim=16, depths=(2, 2), num_heads=(2, 4), window_size=4,
        num_classes=3, head_zero_init=False), 16),
    "ResNet": ("resnet18", dict(
        stage_depths=(1, 1), stage_widths=(8, 16), stem_width=8, num_classes=3), 32),
    "ConvNeXt": ("convnext_tiny", dict(depths=(1, 1), widths=(8, 16), num_classes=3), 32),
    "EfficientNet": ("efficientnet_b0", dict(width_mult=0.25, depth_mult=0.25, num_classes=3), 32),
    "MobileViT": ("mobilevit_xxs", dict(
        widths=(8, 8, 8, 8, 8, 8, 16), dims=(8, 8, 8), depths=(1, 1, 1), num_heads=2,
        num_classes=3), 64),
    "MobileViTV2": ("mobilevitv2_050", dict(depths=(1, 1, 1), num_classes=3), 64),
    "PyramidVisionTransformer": ("pvt_tiny", dict(
        embed_dims=(8, 16), depths=(1, 1), num_heads=(1, 2), mlp_ratios=(2, 2), sr_ratios=(2, 1),
        patch_sizes=(4, 2), image_size=32, num_classes=3, head_zero_init=False), 32),
    "PyramidVisionTransformerV2": ("pvt_v2_b0", dict(
        embed_dims=(8, 16), depths=(1, 1), num_heads=(1, 2), mlp_ratios=(2, 2), sr_ratios=(2, 1),
        patch_sizes=(7, 3), strides=(4, 2), num_classes=3, head_zero_init=False), 32),
    "SegFormer": ("segformer_b0", dict(
        embed_dims=(8, 16), depths=(1, 1), num_heads=(1, 2), mlp_ratios=(2, 2), sr_ratios=(2, 1),
        patch_sizes=(7, 3), strides=(4, 2), decoder_dim=12, num_classes=3), 32),
    "ConvolutionalVisionTransformer": ("cvt_13", dict(
        embed_dims=(8, 16), depths=(1, 1), num_heads=(1, 2), patch_sizes=(7, 3),
        patch_strides=(4, 2), patch_paddings=(2, 1), mlp_ratio=2.0, num_classes=3,
        head_zero_init=False), 32),
    "CrossViT": ("crossvit_tiny_240", dict(
        image_size=24, img_scale=(1.0, 0.5), patch_sizes=(3, 3), embed_dims=(16, 32),
        num_heads=(2, 2), mlp_ratios=(2.0, 2.0), num_blocks=1, branch_depths=(1, 1),
        num_classes=3, head_zero_init=False), 24),
    "LVViT": ("lvvit_s", dict(
        num_classes=3, image_size=16, patch_size=4, stem_dim=8, hidden_size=16, depth=2,
        num_heads=2), 16),
    "FocalTransformer": ("focal_tiny_srf", dict(
        patch_size=2, embed_dim=16, depths=(1, 1), num_heads=(1, 2), window_size=4,
        focal_levels=(2, 2), focal_windows=(3, 1), expand_sizes=(1, 1), num_classes=3), 16),
    "NAT": ("nat_mini", dict(
        embed_dim=16, depths=(1, 1), num_heads=(1, 2), kernel_size=3, dilations=((2,), (1,)),
        mlp_ratio=2.0, layer_scale=0.1, num_classes=3), 32),
    "DETR": ("detr_tiny", dict(), 64),
    "DeformableDETR": ("deformable_detr_tiny", dict(), 64),
    "ConditionalDETR": ("conditional_detr_tiny", dict(), 64),
    "MaskFormer": ("maskformer_tiny", dict(), 64),
}

# Fields that make a model random in training (set > 0 in the train test).
RATES = ("dropout", "attention_dropout", "drop_path_rate", "classifier_dropout",
         "encoder_dropout")

# Extra call arguments. MAE masks whenever it has noise or an rng (in eval too:
# pretraining validation is masked); fixed noise makes its calls comparable.
CALL = {"MaskedAutoencoder": dict(noise=jnp.linspace(0.0, 1.0, 2 * 16).reshape(2, 16))}

# Input side of every registered name for the full-size check (224 otherwise).
SIDE = {"*_240": 240, "*_256": 256, "*_384": 384, "*_192": 192, "mobilevit*": 256,
        "efficientnet_b1": 240, "efficientnet_b2": 260, "efficientnet_b3": 300,
        "efficientnet_b4": 380, "maskformer_tiny": 256}


def _side(name):
  return next((s for p, s in SIDE.items() if fnmatch.fnmatch(name, p)), 224)


def _fields(model):
  return set(type(model).__dataclass_fields__)


def _tiny(cls_name, **extra):
  name, kw, side = TINY[cls_name]
  return create_model(name, **{**kw, **extra}), side


def _images(side, b=2, seed=0):
  return jax.random.normal(jax.random.PRNGKey(seed), (b, side, side, 3))


def _leaves_are_arrays(tree):
  return all(hasattr(x, "shape") and hasattr(x, "dtype") for x in jax.tree.leaves(tree))


def test_every_model_class_has_a_tiny_row():
  classes = {type(create_model(n)).__name__ for n in vitjax_models()}
  assert classes == set(TINY), f"missing: {classes - set(TINY)}, stale: {set(TINY) - classes}"
  for cls_name, (name, _, _) in TINY.items():
    assert type(create_model(name)).__name__ == cls_name, name


RANDOM_PRIMITIVES = {"random_bits", "threefry2x32"}


def _primitives(jaxpr):
  """Names of every primitive in a jaxpr, sub-jaxprs (jit, scan, remat, ...) included."""
  names = set()
  for eqn in jaxpr.eqns:
    names.add(eqn.primitive.name)
    for v in eqn.params.values():
      for sub in (v if isinstance(v, (tuple, list)) else (v,)):
        if isinstance(sub, jax_core.ClosedJaxpr):
          names |= _primitives(sub.jaxpr)
        elif isinstance(sub, jax_core.Jaxpr):
          names |= _primitives(sub)
  return names


def _abstract_variables(model, x):
  return jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), x)


@pytest.mark.parametrize("cls_name", sorted(TINY))
def test_tiny_model_interface(cls_name):
  """Traced, not run (jax.eval_shape / make_jaxpr):
  - apply returns (logits [B, ...] float32, out: a dict of named arrays);
  - with dtype=bfloat16 (where the model has a dtype) it computes in bf16;
  - with every rate > 0 and a dropout rng given, random bits are drawn with
    train=True and never with train=False;
  - BatchNorm statistics come back unchanged (the input arrays themselves)
    with train=False and recomputed with train=True (a DETR backbone's frozen
    BatchNorm, backbone_train_bn=False, stays unchanged in both).
  """
  base, side = _tiny(cls_name)
  fields = _fields(base.encoder if cls_name == "SimMIM" else base)  # SimMIM passes them on
  x = jax.ShapeDtypeStruct((2, side, side, 3), jnp.float32)
  variables = _abstract_variables(base, x)
  kw = CALL.get(cls_name, {})
  logits, out = jax.eval_shape(lambda v, x: base.apply(v, x, **kw), variables, x)
  assert isinstance(out, dict) and out and all(isinstance(k, str) for k in out), type(out)
  assert _leaves_are_arrays(out)
  assert logits.shape[0] == 2 and logits.dtype == jnp.float32, (logits.shape, logits.dtype)

  if "dtype" in fields:
    bf16, _ = _tiny(cls_name, dtype=jnp.bfloat16)
    logits16, out16 = jax.eval_shape(lambda v, x: bf16.apply(v, x, **kw), variables, x)
    assert logits16.shape == logits.shape
    assert logits16.dtype in (jnp.bfloat16, jnp.float32), logits16.dtype
    dtypes = {a.dtype for a in jax.tree.leaves(out16)}
    assert jnp.dtype(jnp.bfloat16) in dtypes, f"no bf16 intermediate: {dtypes}"

  rates = {f: 0.25 for f in RATES if f in fields}
  _check_train(cls_name, _tiny(cls_name, **rates)[0], variables, x, kw, bool(rates))
  if "backbone_train_bn" in fields:
    _check_train(cls_name, _tiny(cls_name, **rates, backbone_train_bn=True)[0], variables, x,
                 kw, bool(rates))


def _check_train(cls_name, model, variables, x, kw, random_in_train):
  """See test_tiny_model_interface."""
  n_stats = len(jax.tree.leaves(variables.get("batch_stats", {})))
  frozen_bn = getattr(model, "backbone_train_bn", True) is False
  for train in (False, True):
    def f(v, x, key, train=train):
      return model.apply(v, x, train=train, rngs={"dropout": key}, mutable=["batch_stats"],
                         **kw)
    jaxpr = jax.make_jaxpr(f)(variables, x, jax.random.PRNGKey(1))
    drawn = RANDOM_PRIMITIVES & _primitives(jaxpr.jaxpr)
    if train:
      assert drawn or not random_in_train, f"{cls_name}: train=True draws no random bits"
    else:
      assert not drawn, f"{cls_name}: train=False draws random bits ({drawn})"
    if not n_stats:
      continue
    # Output leaves: (logits, out) first, then the batch_stats collection.
    stats_out = jaxpr.jaxpr.outvars[-n_stats:]
    inputs = jaxpr.jaxpr.invars[:len(jax.tree.leaves(variables))]
    forwarded = sum(any(o is i for i in inputs) for o in stats_out)
    if train and not frozen_bn:
      assert forwarded < n_stats, f"{cls_name}: train=True leaves every BatchNorm statistic"
    else:
      assert forwarded == n_stats, f"{cls_name}: BatchNorm statistics change (train={train})"


# Exact parameter counts (1000 classes) of timm's / torchvision's reference
# implementations, which vitjax's weight converters or layouts follow; counted
# with `torch.device("meta")` models (timm 1.x, num_classes=1000). ViT / DeiT
# sizes pinned in tests/test_models.py, hybrids, CrossViT, NAT, DETR, DINO, MAE
# and SegFormer in their own files are not repeated here.
EXACT = {
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
    "resnet101": 44_549_160, "resnet152": 60_192_808,
    "convnext_tiny": 28_589_128, "convnext_small": 50_223_688, "convnext_base": 88_591_464,
    "convnext_large": 197_767_336,
    "efficientnet_b0": 5_288_548, "efficientnet_b1": 7_794_184, "efficientnet_b2": 9_109_994,
    "efficientnet_b3": 12_233_232, "efficientnet_b4": 19_341_616,
    "swin_tiny_patch4_window7_224": 28_288_354, "swin_small_patch4_window7_224": 49_606_258,
    "swin_base_patch4_window7_224": 87_768_224, "swin_large_patch4_window7_224": 196_532_476,
    "swinv2_tiny_window8_256": 28_347_154, "swinv2_small_window8_256": 49_728_418,
    "swinv2_base_window8_256": 87_918_816,
    "pvt_v2_b0": 3_666_760, "pvt_v2_b1": 14_009_000, "pvt_v2_b2": 25_362_856,
    "pvt_v2_b2_li": 22_553_512, "pvt_v2_b3": 45_238_696, "pvt_v2_b4": 62_556_072,
    "pvt_v2_b5": 81_956_008,
    "mobilevit_xxs": 1_272_024, "mobilevit_xs": 2_317_848, "mobilevit_s": 5_578_632,
    "mobilevitv2_050": 1_370_593, "mobilevitv2_075": 2_866_009, "mobilevitv2_100": 4_901_841,
    "mobilevitv2_125": 7_478_089, "mobilevitv2_150": 10_594_753, "mobilevitv2_175": 14_251_833,
    "mobilevitv2_200": 18_449_329,
    "vit_small_patch8_224": 22_055_272, "vit_base_patch32_224": 88_224_232,
    "vit_base_patch8_224": 86_576_872, "vit_large_patch32_224": 306_535_400,
    "vit_large_patch14_224": 304_203_752, "vit_huge_patch14_224": 632_045_800,
    "deit_tiny_patch16_224": 5_717_416, "deit_small_patch16_224": 22_050_664,
    "deit_base_patch16_224": 86_567_656, "deit_small_distilled_patch16_224": 22_436_432,
}


@pytest.mark.slow
@pytest.mark.parametrize("name", vitjax_models())
def test_every_registered_model_at_its_input_size(name):
  """Shapes only, at the model's own size: (logits [B, ...], out dict); the
  exact parameter count where EXACT pins one."""
  model = create_model(name)
  side = _side(name)
  x = jax.ShapeDtypeStruct((1, side, side, 3), jnp.float32)
  (logits, out), variables = jax.eval_shape(
      lambda x: model.init_with_output(jax.random.PRNGKey(0), x), x)
  assert isinstance(out, dict) and out and _leaves_are_arrays(out), name
  assert logits.shape[0] == 1, logits.shape
  if name in EXACT:
    n = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(variables["params"]))
    assert n == EXACT[name], (name, n)


def test_exact_counts_name_registered_models():
  assert set(EXACT) <= set(list_models())


@pytest.mark.slow
@pytest.mark.parametrize("cls_name", ["ResNet", "SwinTransformer", "SegFormer", "DETR"])
def test_tiny_model_runs(cls_name):
  """Run, not traced (a few classes: BatchNorm, drop path, a dense head, a
  detector): finite logits in fp32 and bf16; eval ignores the dropout rng;
  train with every rate > 0 depends on it; BatchNorm statistics move only in
  train."""
  base, side = _tiny(cls_name)
  fields = _fields(base.encoder if cls_name == "SimMIM" else base)
  rates = {f: 0.25 for f in RATES if f in fields}
  if "backbone_train_bn" in fields:
    rates["backbone_train_bn"] = True
  model, _ = _tiny(cls_name, **rates)
  x = _images(side)
  kw = CALL.get(cls_name, {})
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), x)

  @functools.partial(jax.jit, static_argnums=2)
  def run(v, key, train):
    return model.apply(v, x, train=train, rngs={"dropout": key}, mutable=["batch_stats"], **kw)

  (a, _), stats_a = run(variables, jax.random.PRNGKey(1), False)
  (b, _), stats_b = run(variables, jax.random.PRNGKey(2), False)
  assert np.isfinite(np.asarray(a)).all()
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  (c, out_c), stats_c = run(variables, jax.random.PRNGKey(1), True)
  (d, out_d), _ = run(variables, jax.random.PRNGKey(2), True)
  if rates:
    assert not all(np.array_equal(u, w) for u, w in zip(jax.tree.leaves((c, out_c)),
                                                        jax.tree.leaves((d, out_d))))
  before = jax.tree.leaves(variables.get("batch_stats", {}))
  for s, moved in ((stats_a, False), (stats_c, True)):
    after = jax.tree.leaves(s.get("batch_stats", {}))
    if before:
      same = all(np.array_equal(u, w) for u, w in zip(before, after))
      assert same != moved, f"{cls_name}: BatchNorm statistics moved={not same}, train={moved}"

  if "dtype" in fields:
    bf16, _ = _tiny(cls_name, dtype=jnp.bfloat16)
    logits16, _ = jax.jit(lambda v: bf16.apply(v, x, **kw))(variables)
    assert np.isfinite(np.asarray(logits16, np.float32)).all()
