"""ResNet-50 on ImageNet-1k, the standard SGD recipe (He et al. 2016 Sec. 3.4
as in torchvision's reference): SGD momentum 0.9, lr 0.1 per 256 images
(here batch 1024, lr 0.4), weight decay 1e-4 (not on BN / biases), 90
epochs, 224x224 Inception crops and flips, ImageNet mean/std. vitjax uses a
cosine schedule with 5 warmup epochs (Goyal et al. 2017) instead of the
paper's step decay; zero-initialised last BN of each residual branch.
Expected: ~76-77% top-1.

  python -m vitjax.main --config=configs/resnet50.py --workdir=...
"""

from vitjax.config import default_config, model_config


def get_config(arg=None):
  del arg
  c = default_config()
  c.model_name = "resnet50"
  c.model = model_config(c.model_name, zero_init_residual=True)
  c.dataset.name = "imagenet2012"
  c.dataset.eval_split = "validation"
  c.input.image_size = 224
  c.input.eval_resize = 256
  c.input.mean = (0.485, 0.456, 0.406)
  c.input.std = (0.229, 0.224, 0.225)
  c.batch_size = 1024
  c.eval_batch_size = 1000
  c.num_epochs = 90
  steps_per_epoch = 1_281_167 // c.batch_size
  c.optimizer.update(name="sgd", learning_rate=0.1 * c.batch_size / 256, momentum=0.9,
                     nesterov=False, weight_decay=1e-4, warmup_steps=5 * steps_per_epoch,
                     schedule="cosine", grad_clip_norm=0.0)
  c.checkpoint_every_steps = 2000
  return c
