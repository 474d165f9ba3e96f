"""ResNet-50 on ImageNet-1k, the standard SGD recipe (He et al. 2016 Sec. 3.4
as in torchvision's reference): SGD momentum 0.9, lr 0.1 per 256 images
(here batch 1024, lr 0.4), weight decay 1e-4 (not on BN / biases), 90
epochs, 224x224 Inception crops and flips, ImageNet mean/std. vitjax uses a
cosine schedule with 5 warmup epochs (Goyal et al. 2017) instead of the
paper's step decay; zero-initialised last BN of each residual branch.
Expected: ~76-77% top-1.

  python -m vitjax.main --config=configs/resnet50.py --workdir=...
"""

from vitjax.config import imagenet_recipe


def get_config(arg=None):
  del arg
  # The shared ImageNet recipe's data, schedule and batch; its optimizer swapped for SGD.
  c = imagenet_recipe("resnet50", num_epochs=90, learning_rate=0.1 * 1024 / 256,
                      weight_decay=1e-4, warmup_epochs=5, label_smoothing=0.0,
                      zero_init_residual=True)
  c.optimizer.update(name="sgd", momentum=0.9, nesterov=False, grad_clip_norm=0.0)
  return c
