"""vit_huge_patch14_224: ImageNet-1k pretraining, or fine-tuning on CIFAR-10/100 or Pets.

  python -m vitjax.main --config=configs/vit_h14.py --workdir=gs://BUCKET/h14_i1k

Hardware: a TPU pod slice (632M parameters: with their AdamW state ~7.6 GB, so
data parallelism needs 16+ GB devices; FSDP spreads it, see
`python -m vitjax.tools.plan --config=configs/vit_h14.py --devices=64` and README
"Scaling up"). The recipe and its sources: vitjax.config.vit_recipe (the ViT
paper pretrained H/14 on JFT-300M, not ImageNet-1k alone; not run here).
"""

from vitjax.config import vit_recipe


def get_config(arg=None):
  """arg: 'imagenet' (default) | 'cifar10' | 'cifar100' | 'pets'."""
  return vit_recipe("vit_huge_patch14_224", arg, drop_path_rate=0.1)
