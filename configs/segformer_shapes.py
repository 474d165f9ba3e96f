"""SegFormer-B0 trained from scratch on the embedded shapes set (semantic segmentation).

  python -m vitjax.main --config=configs/segformer_shapes.py --workdir=/tmp/segformer_shapes

MiT-B0 encoder (widths 32-256, depths 2-2-2-2) + the all-MLP decoder
(C = 256) on 64x64 images of circles / squares / triangles on textured
backgrounds (vitjax.data.shapes: 2000 train, 500 held-out validation
images); per-pixel CE, eval mIoU over background + 3 classes.
Augmentation: random resize 1-1.25x + 64x64 crop (shifts up to 16 px), flip;
no colour jitter (0.75-1.5x resize + colour jitter 0.2 reached only mIoU
0.393 at 500 steps, see experiments/segformer_shapes.md).
Hardware / expected result: see experiments/segformer_shapes.sh (2 CPU
cores; target mIoU >= 0.8 on the validation images).
Arg 'tiny': a 2-stage, 16-wide model for smoke tests.
"""

from vitjax.config import default_config, model_config


def get_config(arg=None):
  c = default_config()
  c.task = "segmentation"
  c.model_name = "segformer_b0"
  c.model = model_config("segformer_b0", drop_path_rate=0.0, dropout=0.0)
  c.model.embed_dims = (32, 64, 160, 256)
  c.model.depths = (2, 2, 2, 2)
  c.model.num_heads = (1, 2, 5, 8)
  c.model.sr_ratios = (8, 4, 2, 1)
  if arg == "tiny":
    c.model.embed_dims = (16, 32)
    c.model.depths = (1, 1)
    c.model.num_heads = (1, 2)
    c.model.sr_ratios = (2, 1)
    c.model.mlp_ratios = (2, 2)
    c.model.patch_sizes = (7, 3)
    c.model.strides = (4, 2)
    c.model.decoder_dim = 16
  elif arg is not None:
    from vitjax.errors import UserError  # pylint: disable=g-import-not-at-top
    raise UserError(f"configs/segformer_shapes.py: unknown arg {arg!r}; use none or 'tiny'.")
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
  c.total_steps = 600
  c.optimizer.update(learning_rate=2e-3, weight_decay=0.01, warmup_steps=100)
  c.log_every_steps = 50
  c.eval_every_steps = 300
  c.checkpoint_every_steps = 300
  c.progress_bar = False
  return c
