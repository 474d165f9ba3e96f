"""A small Deformable DETR trained from scratch on the embedded shapes set (detection).

  python -m vitjax.main --config=configs/deformable_detr_shapes.py --workdir=/tmp/ddetr_shapes

Model: `deformable_detr_tiny` (ResNet with one basic block per stage, widths
16-64, BatchNorm trained rather than frozen; three levels C3-C5 = 8x8, 4x4, 2x2 on 64x64
images; width 64, 4 heads, 2 points per level; one encoder and three decoder
layers; 10 queries) with iterative box refinement. Sigmoid focal class loss,
L1 + GIoU box losses on each decoder layer (Hungarian matching, class cost 2,
as Deformable DETR). Data: 64x64 images with 1-4 circles / squares /
triangles (vitjax.data.shapes; 4000 train, 500 held-out validation images),
random resize 1-1.25x + crop, flip. Eval: COCO box AP / AP50 (pycocotools).
Target (issue 6): box AP50 >= 0.7 on the held-out images within 30 minutes
of training on 2 CPU cores. Measured (2 shared CPU cores, load ~30, 1000 steps with
eval at the end): AP50 0.972, AP 0.775, 18.6 min wall, 4.9 min CPU time; see
experiments/detection_shapes.md.
Arg 'tiny': a few-step smoke configuration.
"""

from vitjax.config import default_config, model_config



def get_config(arg=None):
  return shapes_detection("deformable_detr_tiny", arg, with_box_refine=True)


def shapes_detection(model, arg, **model_kwargs):
  """The shapes-set detection recipe for a DETR-family `model` (also used by
  configs/conditional_detr_shapes.py); `model_kwargs` are the model's own options."""
  c = default_config()
  c.task = "detection"
  c.model_name = model
  c.model = model_config(model, hidden_dim=64, num_heads=4, ffn_dim=128, encoder_layers=1,
                         decoder_layers=3, num_queries=10, backbone_train_bn=True,
                         dropout=0.0, **model_kwargs)
  c.dataset.name = "shapes"
  c.dataset.train_split = "train"
  c.dataset.eval_split = "validation"
  c.task_kwargs.class_loss = "sigmoid_focal"
  c.task_kwargs.class_cost = 2.0
  c.task_kwargs.ce_loss_coef = 2.0
  c.task_kwargs.max_boxes = 4
  c.task_kwargs.num_train_images = 4000
  c.task_kwargs.num_eval_images = 500
  c.task_kwargs.scale_range = (1.0, 1.25)
  c.task_kwargs.color_jitter = 0.0
  c.input.image_size = 64
  c.input.flip = True
  c.batch_size = 32
  c.eval_batch_size = 128
  c.total_steps = 1000
  c.optimizer.update(learning_rate=1e-3, weight_decay=1e-4, warmup_steps=100,
                     grad_clip_norm=0.1)
  c.log_every_steps = 50
  c.eval_every_steps = 500
  c.checkpoint_every_steps = 500
  c.progress_bar = False
  if arg == "tiny":
    c.model.hidden_dim = 32
    c.model.num_heads = 2
    c.model.decoder_layers = 2
    c.task_kwargs.num_train_images = 64
    c.task_kwargs.num_eval_images = 40
    c.batch_size = 8
    c.eval_batch_size = 24
    c.total_steps = 4
    c.eval_every_steps = 4
    c.checkpoint_every_steps = 4
    c.log_every_steps = 2
  elif arg is not None:
    from vitjax.errors import UserError  # pylint: disable=g-import-not-at-top
    raise UserError(f"configs/{model.replace('_tiny', '')}_shapes.py: unknown arg {arg!r}; "
                    "use none or 'tiny'.")
  return c
