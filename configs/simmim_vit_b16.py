"""SimMIM ViT-B/16 pretraining on ImageNet-1k (Xie et al. 2022, Sec. 4.1 /
Table 1's ViT-B row).

  python -m vitjax.main --config=configs/simmim_vit_b16.py --workdir=gs://bucket/simmim_vit_b16

ViT-B/16 at 224x224, mask patch 32 (2x2 patches per block), mask ratio 0.6,
a linear head to the 16x16x3 pixels of every patch, L1 on masked pixels;
RandomResizedCrop (0.67, 1) + flip; AdamW (0.9, 0.999), lr 8e-4 x batch / 2048
at batch 2048, weight decay 0.05, cosine decay, 100 epochs with 10 warmup,
gradient clipping 5.0, drop path 0.1. Fine-tune with configs/vit_b16.py and
--config.init_from.checkpoint=<this workdir>. Hardware: a TPU/GPU pod (not
run here; the paper reports 83.8% top-1 after fine-tuning, 800 epochs).
"""

from vitjax.config import default_config, model_config

IMAGENET_TRAIN = 1_281_167


def get_config(arg=None):
  del arg
  c = default_config()
  c.task = "simmim"
  c.model_name = "simmim_vit_base_patch16_224"
  c.model = model_config(c.model_name, mask_patch_size=32, mask_ratio=0.6)
  c.model.drop_path_rate = 0.1
  c.dataset.name = "imagenet2012"
  c.dataset.eval_split = "validation"
  c.input.image_size = 224
  c.input.eval_resize = 256
  c.input.train_augment = "inception_crop"
  c.input.crop_scale = (0.67, 1.0)
  c.input.flip = True
  c.input.mean = (0.485, 0.456, 0.406)
  c.input.std = (0.229, 0.224, 0.225)
  c.batch_size = 2048
  c.eval_batch_size = 1024
  c.num_epochs = 100
  steps_per_epoch = IMAGENET_TRAIN // c.batch_size
  c.optimizer.update(name="adamw", learning_rate=8e-4 * c.batch_size / 2048, b1=0.9,
                     b2=0.999, weight_decay=0.05, schedule="cosine",
                     warmup_steps=10 * steps_per_epoch, grad_clip_norm=5.0)
  c.eval_every_steps = 10 * steps_per_epoch
  c.checkpoint_every_steps = 2000
  return c
