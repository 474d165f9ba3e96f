"""DINO ViT-B/16 pretraining on ImageNet-1k (Caron et al. 2021).

  python -m vitjax.main --config=configs/dino_vit_b16.py --workdir=gs://bucket/dino_b16

configs/dino_vit_s16.py's recipe (2x224 + 10x96 crops, 65536 outputs, batch
1024, lr 0.0005 x batch / 256, weight decay 0.04 -> 0.4, teacher 0.996 -> 1)
with the ViT-B/16 backbone for 400 epochs, the paper's ViT-B/16 run (kNN
76.1% / linear 78.2% reported). Not run here (a GPU/TPU pod).
"""

import importlib.util
import os


def get_config(arg=None):
  del arg
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dino_vit_s16.py")
  spec = importlib.util.spec_from_file_location("dino_vit_s16", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.dino_imagenet("dino_vit_base_patch16", 400)
