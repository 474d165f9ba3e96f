"""MAE ViT-B/16 pretraining on ImageNet-1k: the paper's recipe (He et al. 2021,
Appendix A.1, Table 8).

  python -m vitjax.main --config=configs/mae_vit_b16.py --workdir=gs://bucket/mae_b16

1600 epochs, batch 4096, AdamW (0.9, 0.95), base lr 1.5e-4 x batch / 256
(= 2.4e-3), weight decay 0.05, cosine decay, 40 warmup epochs, no gradient
clipping, mask ratio 0.75, normalised-pixel targets, RandomResizedCrop
(0.2, 1) + flip. The eval metric is the masked-patch reconstruction loss on
the validation split. Fine-tune the encoder with a ViT-B/16 config and
--config.init_from.checkpoint=<this workdir>. Hardware: a TPU/GPU pod (not
run here; the paper reports 83.6% top-1 after fine-tuning).
"""

from vitjax.config import default_config, model_config

IMAGENET_TRAIN = 1_281_167


def get_config(arg=None):
  del arg
  c = default_config()
  c.task = "mae"
  c.model_name = "mae_vit_base_patch16"
  c.model = model_config(c.model_name, mask_ratio=0.75, norm_pix_loss=True)
  c.dataset.name = "imagenet2012"
  c.dataset.eval_split = "validation"
  c.input.image_size = 224
  c.input.eval_resize = 256
  c.input.train_augment = "inception_crop"
  c.input.crop_scale = (0.2, 1.0)
  c.input.flip = True
  c.input.mean = (0.485, 0.456, 0.406)
  c.input.std = (0.229, 0.224, 0.225)
  c.batch_size = 4096
  c.eval_batch_size = 1024
  c.num_epochs = 1600
  steps_per_epoch = IMAGENET_TRAIN // c.batch_size
  c.optimizer.update(name="adamw", learning_rate=1.5e-4 * c.batch_size / 256, b1=0.9,
                     b2=0.95, weight_decay=0.05, schedule="cosine",
                     warmup_steps=40 * steps_per_epoch, grad_clip_norm=0.0)
  c.eval_every_steps = 20 * steps_per_epoch
  c.checkpoint_every_steps = 2000
  return c
