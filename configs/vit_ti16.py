"""vit_tiny_patch16_224: ImageNet-1k pretraining, or fine-tuning on CIFAR-10/100 or Pets.

  python -m vitjax.main --config=configs/vit_ti16.py --workdir=gs://BUCKET/ti16_i1k
  python -m vitjax.main --config=configs/vit_ti16.py:cifar10 --workdir=/tmp/ti16_c10 \
      --config.init_from.checkpoint=gs://BUCKET/ti16_i1k

Hardware: a TPU v3-32 / 8+ GPUs for pretraining (300 epochs), one host for
fine-tuning. The recipe and its sources: vitjax.config.vit_recipe. ImageNet
top-1 to expect from this recipe without extra augmentation: ViT paper Table 5
(ViT-B/16 at 224: ~74-78%; DeiT-style augmentation, issue 4, adds more).
"""

from vitjax.config import vit_recipe


def get_config(arg=None):
  """arg: 'imagenet' (default) | 'cifar10' | 'cifar100' | 'pets'."""
  return vit_recipe("vit_tiny_patch16_224", arg, drop_path_rate=0.0)
