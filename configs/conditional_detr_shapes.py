"""A small Conditional DETR trained from scratch on the embedded shapes set (detection).

  python -m vitjax.main --config=configs/conditional_detr_shapes.py --workdir=/tmp/cdetr_shapes

Model: `conditional_detr_tiny` (ResNet with one basic block per stage, widths
16-64; C5 = 2x2 on 64x64 images; width 64, 4 heads; one encoder and three
decoder layers; 10 queries; conditional spatial queries in the decoder
cross-attention). Sigmoid focal class loss (class cost 2), L1 + GIoU box
losses on every decoder layer, as Conditional DETR. Same data and schedule
as configs/deformable_detr_shapes.py (4000 train / 500 held-out 64x64 shapes
images); measured figures in experiments/detection_shapes.md.
Arg 'tiny': a few-step smoke configuration.
"""

import importlib.util
import os


def get_config(arg=None):
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "deformable_detr_shapes.py")
  spec = importlib.util.spec_from_file_location("deformable_detr_shapes", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.shapes_detection("conditional_detr_tiny", arg)
  if arg is None:
    c.total_steps = 3000
    c.eval_every_steps = 1000
    c.checkpoint_every_steps = 1000
  return c
