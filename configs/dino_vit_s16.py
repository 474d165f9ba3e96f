"""DINO ViT-S/16 pretraining on ImageNet-1k: the paper's recipe (Caron et al.
2021, Sec. 4 / App. and the authors' defaults).

  python -m vitjax.main --config=configs/dino_vit_s16.py --workdir=gs://bucket/dino_s16
  python -m vitjax.main --config=configs/dino_vit_s16.py:300ep ...   (paper ablations: 100 / 300)

Multi-crop 2x224 (area 0.4-1) + 10x96 (area 0.05-0.4), flip, colour jitter,
blur, solarisation, made in the jitted step from the 224x224 image the input
pipeline resizes to (train_augment='none'; the paper crops the full-resolution
image: the global crops here are upsampled from at most 224 pixels). Head
65536 outputs (2048 hidden, 256 bottleneck, g fixed to 1); student temperature
0.1, teacher 0.04 -> 0.07 over 30 epochs, center momentum 0.9, teacher
momentum 0.996 -> 1 (cosine). AdamW, batch 1024, lr 0.0005 x batch / 256
(= 2e-3) after 10 warmup epochs, cosine to 1e-6, weight decay 0.04 -> 0.4
(cosine), gradient clipping 3.0 (the authors clip per parameter tensor; this
clips the global norm), drop path 0.1; 800 epochs. Not run here (a GPU/TPU
pod); the paper reports kNN 74.5% / linear 77.0% for ViT-S/16 after 800
epochs. As in the authors' code, the head's last layer is frozen for the first
epoch (`optimizer.unfreeze`).
"""

from vitjax.config import default_config, model_config
from vitjax.tasks.dino import dino_kwargs

IMAGENET_TRAIN = 1_281_167


def dino_imagenet(model_name: str, epochs: int, *, clip: float = 3.0):
  """The DINO ImageNet config shared by ViT-S/16 and ViT-B/16."""
  c = default_config()
  c.task = "dino"
  c.model_name = model_name
  c.model = model_config(model_name, drop_path_rate=0.1)
  c.dataset.name = "imagenet2012"
  c.dataset.eval_split = "validation"
  c.input.image_size = 224
  c.input.eval_resize = 256
  c.input.train_augment = "none"
  c.input.flip = False          # the views flip
  c.input.mean = (0.485, 0.456, 0.406)
  c.input.std = (0.229, 0.224, 0.225)
  c.task_kwargs = dino_kwargs(global_size=224, local_size=96, num_local_crops=10,
                              warmup_teacher_temp_frac=30 / epochs)
  c.batch_size = 1024
  c.eval_batch_size = 1000
  c.num_epochs = epochs
  steps_per_epoch = IMAGENET_TRAIN // c.batch_size
  c.optimizer.update(name="adamw", learning_rate=0.0005 * c.batch_size / 256,
                     end_learning_rate=1e-6, weight_decay=0.04, weight_decay_end=0.4,
                     schedule="cosine", warmup_steps=10 * steps_per_epoch,
                     grad_clip_norm=clip)
  # The head's weight-normalised last layer stays frozen during the first epoch.
  c.optimizer.unfreeze = ((steps_per_epoch, "^dino_head/last_layer/"),)
  c.eval_every_steps = 10 * steps_per_epoch
  c.checkpoint_every_steps = 2000
  return c


def get_config(arg=None):
  epochs = int(arg[:-2]) if arg and arg.endswith("ep") else 800
  return dino_imagenet("dino_vit_small_patch16", epochs)
