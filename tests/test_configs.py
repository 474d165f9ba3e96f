"""Every config in configs/ loads, validates and names a registered model."""

import glob
import importlib.util
import os

import pytest

from conftest import ROOT
from vitjax.config import default_config, validate_config
from vitjax.errors import UserError
from vitjax.models import list_models

CASES = [("quickstart", None), ("quickstart", "resnet_size"), ("tome_digits", None)] + [
    (f"vit_{s}", a) for s in ("ti16", "s16", "b16", "l16")
    for a in (None, "cifar10", "cifar100", "pets")] + [
    (f"deit_{s}", a) for s in ("tiny", "small", "base") for a in (None, "distilled")] + [
    ("swin_digits", None), ("swin_digits", "v2"), ("swin_tiny", None), ("swin_tiny", "v2"),
    ("resnet_digits", None), ("resnet50", None), ("convnext_tiny", None),
    ("pvt_digits", None), ("pvt_digits", "v1"),
    ("cvt_digits", None), ("cvt_13", None), ("cvt_13", "w24"),
    ("efficientnet_digits", None), ("efficientnet_b0", None), ("efficientnet_b0", "b3"),
    ("mobilevit_digits", None), ("mobilevit_digits", "v2"), ("mobilevit_s", None),
    ("mobilevit_s", "v2"),
    ("focal_digits", None), ("focal_digits", "lrf"), ("focal_tiny", None), ("focal_tiny", "lrf"),
    ("multilabel_digits", None), ("multilabel_digits", "mixup"),
    ("vit_b16", "imagenet,medium2"), ("vit_h14", None), ("vit_g14", None),
    ("mae_digits", None), ("mae_vit_b16", None),
    ("simmim_digits", None), ("simmim_swin_b", None), ("simmim_vit_b16", None),
    ("dino_digits", None), ("dino_vit_s16", None), ("dino_vit_s16", "300ep"),
    ("dino_vit_b16", None), ("moco_v3_digits", None), ("moco_v3_vit_b16", None),
    ("segformer_shapes", None), ("segformer_shapes", "tiny"),
    ("maskformer_shapes", None), ("maskformer_shapes", "tiny"),
    ("detr_shapes", None), ("detr_shapes", "tiny"),
    ("crossvit_digits", None), ("crossvit_tiny", None), ("crossvit_tiny", "15_dagger"),
    ("lvvit_digits", None), ("lvvit_s", None), ("lvvit_s", "m"),
    ("nat_digits", None), ("nat_digits", "dinat"), ("nat_mini", None), ("nat_mini", "dinat"),
    ("deit_digits", None), ("deit_digits", "soft"), ("deit_digits", "none"),
    ("deformable_detr_shapes", None), ("deformable_detr_shapes", "tiny"),
    ("conditional_detr_shapes", None), ("conditional_detr_shapes", "tiny"),
    ("finetune", "vit_base_patch16_224"), ("finetune", "deit_small_patch16_224"),
    ("finetune", "swin_tiny_patch4_window7_224"), ("finetune", "convnext_tiny"),
    ("finetune", "resnet50"), ("finetune", "efficientnet_b0"), ("finetune", "resnet18,quick")]


def load(name, arg):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", name + ".py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


def test_every_config_file_is_covered():
  files = {os.path.basename(f)[:-3] for f in glob.glob(os.path.join(ROOT, "configs", "*.py"))}
  assert files == {n for n, _ in CASES}


@pytest.mark.parametrize("name,arg", CASES)
def test_config_validates(name, arg):
  c = load(name, arg)
  validate_config(c, num_devices=8)
  assert c.model_name in list_models()
  if arg == "distilled":
    assert "distilled" in c.model_name


def test_bad_arg_and_bad_values():
  with pytest.raises(UserError, match="cifar10"):
    load("vit_b16", "cifar11")
  c = default_config()
  c.optimizer.name = "adam"
  with pytest.raises(UserError, match="adamw"):
    validate_config(c, 1)
