"""vit_giant_patch14_224 (ViT-g/14, 1.01B parameters): pretraining on a pod slice.

  python -m vitjax.main --config=configs/vit_g14.py --workdir=gs://BUCKET/g14

The optimizer and memory layout of Zhai et al. 2022 ("Scaling Vision
Transformers", Sec. 3 and Table 2): Adafactor with the first moment kept
(b1 0.9) and stored in bfloat16, factored second moments (b2 0.999), weight
decay 0.03 on the body, batch 4096 here (the paper: 32k on JFT-3B, which is
not public; this config reads ImageNet-1k through TFDS), bf16 compute with
float32 master weights, the blocks as one scanned and rematerialised loop.
Mesh: ('data', -1) x ('fsdp', 16): parameters, optimizer state and gradients
sharded 16 ways (FSDP), data parallel across the groups of 16 — on a TPU
v4-128 / v5p-128 slice (64 hosts x ... devices, -1 fills in the rest).

Not trained here (no pod on this machine). What it needs per device is
measured without the hardware by the memory plan (README "Scaling up"):
  python -m vitjax.tools.plan --config=configs/vit_g14.py --devices=64
"""

from vitjax.config import imagenet_recipe


def get_config(arg=None):
  """arg: unused (one recipe)."""
  del arg
  c = imagenet_recipe("vit_giant_patch14_224", batch_size=4096, num_epochs=90,
                      learning_rate=8e-4, weight_decay=0.03, warmup_epochs=10,
                      label_smoothing=0.0, scan_blocks=True, remat=True)
  c.optimizer.update(name="adafactor", b1=0.9, b2=0.999, state_dtype="bfloat16",
                     grad_clip_norm=1.0)
  c.eval_batch_size = 1024  # a multiple of the slice's device count
  c.mixed_precision = "bf16"
  c.sharding.mesh = (("data", -1), ("fsdp", 16))
  c.sharding.rules = ((".*", "fsdp"),)
  return c
