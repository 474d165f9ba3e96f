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

import importlib.util
import os


def get_config(arg=None):
  del arg
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "simmim_swin_b.py")
  spec = importlib.util.spec_from_file_location("simmim_swin_b", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.simmim_imagenet("simmim_vit_base_patch16_224", 224, 256, drop_path_rate=0.1)
