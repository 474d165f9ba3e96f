"""MaskFormer trained from scratch on the embedded shapes set (mask
classification: semantic mIoU and panoptic quality).

  python -m vitjax.main --config=configs/maskformer_shapes.py --workdir=/tmp/maskformer_shapes

PVT v2-b0 backbone (= SegFormer's MiT-b0 encoder, widths 32-256) -> FPN pixel
decoder (64 wide) -> 3-layer DETR decoder (D = 128, 16 queries) -> class
(background, circle, square, triangle + no object) and mask per query, on
64x64 images of the shapes set (2000 train, 500 held-out validation); targets
are the background (stuff) and every instance (things). Same augmentation
and budget as configs/segformer_shapes.py (resize 1-1.25x, crop, flip; 2 CPU
cores, 15 min); measured figures in experiments/maskformer_shapes.md.
Arg 'tiny': a 2-stage, 32-wide model for smoke tests.
"""

from vitjax.config import default_config


def get_config(arg=None):
  c = default_config()
  c.task = "mask_classification"
  c.model_name = "maskformer_tiny"
  c.model.backbone = "pvt_v2_b0"
  c.model.backbone_kwargs = dict(drop_path_rate=0.0)
  c.model.stage_norms = False
  c.model.num_queries = 16
  c.model.hidden_dim = 128
  c.model.fpn_dim = 64
  c.model.mask_dim = 64
  c.model.decoder_layers = 3
  c.model.num_heads = 4
  c.model.ffn_dim = 256
  c.model.dropout = 0.0
  c.total_steps = 500
  if arg == "tiny":
    c.model.backbone_kwargs = dict(embed_dims=(32, 32), depths=(1, 1), num_heads=(1, 1),
                                   mlp_ratios=(2, 2), sr_ratios=(2, 1), patch_sizes=(7, 3),
                                   strides=(4, 2), drop_path_rate=0.0)
    c.model.hidden_dim = 32
    c.model.fpn_dim = 32
    c.model.mask_dim = 32
    c.model.decoder_layers = 1
    c.model.ffn_dim = 64
    c.total_steps = 4
  elif arg is not None:
    from vitjax.errors import UserError  # pylint: disable=g-import-not-at-top
    raise UserError(f"configs/maskformer_shapes.py: unknown arg {arg!r}; use none or 'tiny'.")
  c.dataset.name = "shapes"
  c.dataset.train_split = "train"
  c.dataset.eval_split = "validation"
  c.task_kwargs.num_train_images = 2000
  c.task_kwargs.num_eval_images = 500
  c.task_kwargs.scale_range = (1.0, 1.25)
  c.task_kwargs.color_jitter = 0.0
  c.input.image_size = 64
  c.input.flip = True
  c.batch_size = 32
  c.eval_batch_size = 128
  c.optimizer.update(learning_rate=1e-3, weight_decay=0.01, warmup_steps=100)
  c.log_every_steps = 50
  c.eval_every_steps = 250
  c.checkpoint_every_steps = 250
  c.progress_bar = False
  return c
