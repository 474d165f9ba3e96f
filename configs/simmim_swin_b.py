"""SimMIM Swin-B pretraining on ImageNet-1k: the paper's recipe (Xie et al.
2022, Sec. 4.1 / Appendix).

  python -m vitjax.main --config=configs/simmim_swin_b.py --workdir=gs://bucket/simmim_swin_b

Swin-B at 192x192 with window 6, mask patch 32 (the encoder's output stride),
mask ratio 0.6, RandomResizedCrop (0.67, 1) + flip; AdamW (0.9, 0.999),
lr 8e-4 x batch / 2048 at batch 2048, weight decay 0.05, cosine decay,
100 epochs with 10 warmup, gradient clipping 5.0. Fine-tune with a Swin-B
config and --config.init_from.checkpoint=<this workdir>. Hardware: a TPU/GPU
pod (not run here; the paper reports 83.8% top-1 after 100-epoch fine-tuning
at 224 px, Table 1).
"""

from vitjax.config import default_config, model_config

IMAGENET_TRAIN = 1_281_167


def get_config(arg=None):
  del arg
  return simmim_imagenet("simmim_swin_base_patch4_window6_192", 192, 219, window_size=6,
                         drop_path_rate=0.0)


def simmim_imagenet(model, image_size, eval_resize, **model_kwargs):
  """The paper's ImageNet-1k pretraining recipe for a SimMIM `model` (also used by
  configs/simmim_vit_b16.py)."""
  c = default_config()
  c.task = "simmim"
  c.model_name = model
  c.model = model_config(c.model_name, mask_patch_size=32, mask_ratio=0.6)
  c.model.update(model_kwargs)
  c.dataset.name = "imagenet2012"
  c.dataset.eval_split = "validation"
  c.input.image_size = image_size
  c.input.eval_resize = eval_resize
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
