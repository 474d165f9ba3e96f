"""MoCo v3 ViT-B/16 pretraining on ImageNet-1k: the paper's recipe (Chen, Xie
and He 2021, Sec. 5 / App. and the authors' defaults).

  python -m vitjax.main --config=configs/moco_v3_vit_b16.py --workdir=gs://bucket/moco_b16

Two 224x224 BYOL views (area 0.08-1, flip, colour jitter, blur 1.0 / 0.1,
solarisation 0 / 0.2) made in the jitted step from the 224x224 image the input
pipeline resizes to (train_augment='none'). ViT-B/16 with a fixed 2-D sin-cos
position embedding and the random patch projection frozen (the paper's
stability trick: optimizer.freeze on patch_embed/), projector 3 layers and
predictor 2 layers (4096 hidden, 256 out, BatchNorm), temperature 0.2,
momentum 0.99 -> 1 (cosine). AdamW, batch 4096, lr 1.5e-4 x batch / 256
(= 2.4e-3), 40 warmup epochs, cosine, weight decay 0.1, 300 epochs. Not run
here (a GPU/TPU pod); the paper reports 76.7% linear-probe top-1.
"""

from vitjax.config import default_config, model_config
from vitjax.tasks.moco import moco_v3_kwargs

IMAGENET_TRAIN = 1_281_167


def get_config(arg=None):
  del arg
  c = default_config()
  c.task = "moco_v3"
  c.model_name = "moco_v3_vit_base_patch16"
  c.model = model_config(c.model_name, posemb="sincos2d")
  c.dataset.name = "imagenet2012"
  c.dataset.eval_split = "validation"
  c.input.image_size = 224
  c.input.eval_resize = 256
  c.input.train_augment = "none"
  c.input.flip = False          # the views flip
  c.input.mean = (0.485, 0.456, 0.406)
  c.input.std = (0.229, 0.224, 0.225)
  c.task_kwargs = moco_v3_kwargs(temperature=0.2, momentum=0.99, crop_scale=(0.08, 1.0),
                                 random_patch_projection=True)
  c.batch_size = 4096
  c.eval_batch_size = 1000
  c.num_epochs = 300
  steps_per_epoch = IMAGENET_TRAIN // c.batch_size
  c.optimizer.update(name="adamw", learning_rate=1.5e-4 * c.batch_size / 256,
                     weight_decay=0.1, schedule="cosine", warmup_steps=40 * steps_per_epoch,
                     grad_clip_norm=0.0, freeze=("^patch_embed/",))
  c.eval_every_steps = 10 * steps_per_epoch
  c.checkpoint_every_steps = 2000
  return c
