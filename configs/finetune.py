"""Fine-tune published weights with the paper's fine-tuning recipe of their family.

  python -m vitjax.main --config=configs/finetune.py:swin_tiny_patch4_window7_224 \
      --config.init_from.checkpoint=/snapshots/swin-tiny --workdir=/tmp/ft_swin
  python -m vitjax.main --config=configs/finetune.py:vit_base_patch16_224,quick \
      --config.init_from.checkpoint=hf:google/vit-base-patch16-224 --workdir=/tmp/ft_quick

The argument is the registered model name of the checkpoint's architecture
(vitjax.models.list_models()); its family picks the recipe below (learning
rate, layer decay, epochs, warmup, weight decay, resolution, augmentation).
`init_from.checkpoint` is left for you (an HF snapshot folder, a .safetensors
file or hf:<org>/<name>; the family is recognised, source='auto'); the head
is re-initialised for the new classes. The data set is the embedded digits
(upsampled to the recipe's resolution) so that the command runs as is; set
--config.dataset.name=imagefolder --config.dataset.data_dir=DIR (or a TFDS
name) for your data. A second part ',quick' keeps the recipe but runs 10
steps of batch 16, to check the pipeline.

What was run: `configs/finetune.py:resnet18,quick` without a checkpoint on a
shared 2-core CPU (384 px: compile 65 s, train loss 2.54 finite at step 5;
stopped there, ~0.3 images/s) and the notebook colabs/finetune_pretrained.ipynb
(a small random HF ViT snapshot fine-tuned 150 steps on the digits through
this config: it runs and the train loss falls). No published checkpoint was
fine-tuned here (no network): the recipes are the papers', no accuracy is
claimed.
"""

from vitjax.config import default_config, model_config
from vitjax.errors import UserError

# Per family: the fine-tuning recipe of its paper, for batch `batch_size`.
RECIPES = {
    # MAE (He et al. 2022), Table 9, end-to-end fine-tuning of ViT-B (BEiT's recipe, which
    # DeiT III's fine-tuning also follows): AdamW (0.9, 0.999), base lr 5e-4 x batch / 256
    # at batch 1024, layer decay 0.65 (0.75 for L/H), weight decay 0.05, 100 epochs (50
    # for L/H), 5 warmup epochs, label smoothing 0.1, drop path 0.1, RandAugment (9, 0.5),
    # Mixup 0.8, CutMix 1.0, 224 px.
    "vit": dict(optimizer="adamw", learning_rate=5e-4 * 1024 / 256, layer_decay=0.65,
                weight_decay=0.05, num_epochs=100, warmup_epochs=5, batch_size=1024,
                image_size=224, drop_path_rate=0.1, label_smoothing=0.1,
                randaugment=(2, 9.0), mixup_alpha=0.8, cutmix_alpha=1.0),
    # Swin (Liu et al. 2021), Appendix A2.1, ImageNet-22K -> 1K fine-tuning: AdamW, 30
    # epochs, batch 1024, a constant learning rate of 1e-5, weight decay 1e-8, the
    # pre-training's augmentation; no layer decay; 224 px (384 px at window 12).
    "swin": dict(optimizer="adamw", learning_rate=1e-5, layer_decay=1.0, weight_decay=1e-8,
                 num_epochs=30, warmup_epochs=0, batch_size=1024, image_size=224,
                 drop_path_rate=0.1, label_smoothing=0.1, schedule="constant",
                 randaugment=(2, 9.0), mixup_alpha=0.8, cutmix_alpha=1.0),
    # ConvNeXt (Liu et al. 2022), Appendix A.1 (Table 11), ImageNet-22K -> 1K fine-tuning:
    # AdamW, lr 5e-5, layer-wise lr decay 0.8, weight decay 1e-8, batch 512, 30 epochs, no
    # warmup, cosine, label smoothing 0.1, RandAugment (9, 0.5), no Mixup / CutMix, 224 px.
    "convnext": dict(optimizer="adamw", learning_rate=5e-5, layer_decay=0.8,
                     weight_decay=1e-8, num_epochs=30, warmup_epochs=0, batch_size=512,
                     image_size=224, drop_path_rate=0.2, label_smoothing=0.1,
                     randaugment=(2, 9.0), mixup_alpha=0.0, cutmix_alpha=0.0),
    # ResNet: BiT (Kolesnikov et al. 2020), Sec. 3.3 "BiT-HyperRule": SGD momentum 0.9, lr
    # 0.003, batch 512, no weight decay, 500 / 10k / 20k steps for < 20k / < 500k / more
    # examples (here: 500 steps), lr decayed 10x at 30/60/90% (vitjax: cosine instead),
    # resize 448 + random crop 384 (160 / 128 for small images), flips, Mixup 0.1 only for
    # the larger data sets.
    "resnet": dict(optimizer="sgd", learning_rate=0.003, layer_decay=1.0, weight_decay=0.0,
                   total_steps=500, warmup_epochs=0, batch_size=512, image_size=384,
                   drop_path_rate=0.0, label_smoothing=0.0, randaugment=(0, 0.0),
                   mixup_alpha=0.0, cutmix_alpha=0.0),
}
# Families whose papers give no fine-tuning recipe this file cites: a plain AdamW one
# (lr 1e-4, cosine, 30 epochs, weight decay 0.05, no layer decay, no mixing).
GENERIC = dict(optimizer="adamw", learning_rate=1e-4, layer_decay=1.0, weight_decay=0.05,
               num_epochs=30, warmup_epochs=1, batch_size=512, image_size=224,
               drop_path_rate=0.1, label_smoothing=0.1, randaugment=(0, 0.0),
               mixup_alpha=0.0, cutmix_alpha=0.0)
_CLASS_FAMILY = {"VisionTransformer": "vit", "SwinTransformer": "swin", "ConvNeXt": "convnext",
                 "ResNet": "resnet"}
_DIGITS_TRAIN = 1437  # the embedded digits' train split


def family_of(model_name: str) -> str:
  """'vit', 'swin', 'convnext', 'resnet' or '' (no cited recipe) for a registered name."""
  from vitjax.models import create_model, list_models  # pylint: disable=g-import-not-at-top
  if model_name not in list_models():
    import difflib  # pylint: disable=g-import-not-at-top
    close = difflib.get_close_matches(model_name, list_models(), n=3)
    raise UserError(f"configs/finetune.py:{model_name}: not a registered model name"
                    f"{' (did you mean ' + ', '.join(close) + '?)' if close else ''}. Give the "
                    "name of the checkpoint's architecture, e.g. swin_tiny_patch4_window7_224.")
  return _CLASS_FAMILY.get(type(create_model(model_name)).__name__, "")


def get_config(arg=None):
  if not arg:
    raise UserError("configs/finetune.py needs the model name: configs/finetune.py:NAME[,quick]"
                    ", e.g. configs/finetune.py:swin_tiny_patch4_window7_224.")
  model_name, _, mode = arg.partition(",")
  if mode not in ("", "quick"):
    raise UserError(f"configs/finetune.py:{arg}: the second part may only be 'quick'.")
  r = RECIPES.get(family_of(model_name), GENERIC)
  c = default_config()
  c.model_name = model_name
  c.model = model_config(model_name, drop_path_rate=r["drop_path_rate"])
  c.init_from.checkpoint = ""  # yours: a snapshot folder, a .safetensors file, hf:org/name
  c.init_from.source = "auto"
  c.init_from.reinit_head = True
  c.dataset.name = "digits"
  c.input.image_size = r["image_size"]
  c.input.train_augment = "random_crop"
  c.input.crop_padding = max(1, r["image_size"] // 16)
  c.input.flip = False  # a flipped digit is another digit; True for natural images
  c.batch_size = r["batch_size"]
  c.eval_batch_size = 360
  steps_per_epoch = max(1, _DIGITS_TRAIN // c.batch_size)
  if "total_steps" in r:
    c.total_steps = r["total_steps"]
  else:
    c.num_epochs = r["num_epochs"]
  c.optimizer.update(name=r["optimizer"], learning_rate=r["learning_rate"],
                     weight_decay=r["weight_decay"], layer_decay=r["layer_decay"],
                     warmup_steps=r["warmup_epochs"] * steps_per_epoch,
                     schedule=r.get("schedule", "cosine"))
  c.label_smoothing = r["label_smoothing"]
  layers, magnitude = r["randaugment"]
  c.augment.update(randaugment_layers=layers, randaugment_magnitude=magnitude,
                   mixup_alpha=r["mixup_alpha"], cutmix_alpha=r["cutmix_alpha"])
  c.log_every_steps = 10
  c.eval_every_steps = 0
  c.checkpoint_every_steps = 500
  if mode == "quick":
    c.batch_size = 16
    c.total_steps = 10
    c.optimizer.warmup_steps = 0
    c.log_every_steps = 5
    c.progress_bar = False
  return c
