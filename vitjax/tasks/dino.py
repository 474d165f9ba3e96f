"""DINO self-distillation (Caron et al. 2021) as a task of the one trainer.

`config.task = 'dino'` with a DINO model (vitjax/models/dino.py, e.g.
`dino_vit_small_patch16`) and `config.task_kwargs` (defaults: the paper's):
  global_size (224), local_size (96), num_local_crops (10 in the paper's
    best setting, `2x224 + 10x96`), global_scale ((0.4, 1.0)), local_scale
    ((0.05, 0.4)), flip (True), jitter_prob (0.8), blur (True: p 1.0 / 0.1 on
    the global crops, 0.5 on the local ones), solarize (0.2 on the second
    global crop); the views are made in the jitted step (tasks/multicrop.py).
  student_temp (0.1); teacher_temp (0.07) reached linearly from
    warmup_teacher_temp (0.04) over warmup_teacher_temp_frac (0.1) of the run
    (the paper: 30 of 300 epochs).
  center_momentum (0.9): the center is an EMA of the teacher's batch-mean output.
  momentum_teacher (0.996): the teacher is an EMA of the student with momentum
    1 - (1 - m0) (cos(pi k / K) + 1) / 2 at step k of K (cosine to 1).

The loss: the teacher (no gradient, no drop path) sees the 2 global crops,
the student all crops; for every (teacher global view i, student view v != i)
the cross-entropy H(softmax((t_i - center) / teacher_temp),
softmax(s_v / student_temp)), averaged over pairs and images.

The task's state (TrainState.task_state) is {'teacher': params, 'center':
[1, out_dim]}; it is checkpointed with the rest, so a run resumes exactly.
Evaluation reports the mean entropy of the student's output distribution on
the eval images (log(out_dim): uniform collapse; 0: one-hot collapse); the
frozen-feature quality is measured by `python -m vitjax.tools.probe`, which
reads the student (the `params`), as fine-tuning does.
"""

import math

import jax
import jax.numpy as jnp
import ml_collections

from vitjax.errors import UserError
from vitjax.schedules import cosine_momentum, teacher_temperature, total_train_steps
from vitjax.tasks.base import Task, apply_model, register_task
from vitjax.tasks.multicrop import ViewSpec, check_crop_size, check_scale, make_views

_DEFAULTS = dict(
    global_size=224, local_size=96, num_local_crops=10,
    global_scale=(0.4, 1.0), local_scale=(0.05, 0.4),
    flip=True, jitter_prob=0.8, blur=True, solarize=0.2,
    student_temp=0.1, teacher_temp=0.07, warmup_teacher_temp=0.04,
    warmup_teacher_temp_frac=0.1, center_momentum=0.9, momentum_teacher=0.996)


def dino_kwargs(**overrides) -> ml_collections.ConfigDict:
  """config.task_kwargs for 'dino', with the defaults filled in."""
  return ml_collections.ConfigDict(dict(_DEFAULTS, **overrides))


def dino_loss(student, teacher, center, student_temp, teacher_temp):
  """Mean over (teacher view i, student view v != i) pairs of the cross-entropy.

  student: list of [B, K] logits, the first ones from the same global views
  as `teacher` (list of [B, K]).
  """
  targets = [jax.nn.softmax((t - center) / teacher_temp, axis=-1) for t in teacher]
  logp = [jax.nn.log_softmax(s / student_temp, axis=-1) for s in student]
  terms = [jnp.mean(jnp.sum(-q * logp[v], axis=-1))
           for i, q in enumerate(targets) for v in range(len(logp)) if v != i]
  return sum(terms) / len(terms)


@register_task("dino")
class DinoTask(Task):
  """Student vs EMA teacher on multi-crop views; no labels."""

  host_augment = True  # the input pipeline's host-side ops run before the views
  kwargs = _DEFAULTS

  def __init__(self, config, info, model):
    super().__init__(config, info, model)
    if not hasattr(model, "out_dim") or not hasattr(model, "head_bottleneck_dim"):
      raise UserError(f"config.task='dino' needs a DINO model (dino_vit_*), not "
                      f"{config.model_name!r}; see vitjax.models.list_models('dino_*').")
    kw = self.kw
    p = model.patch_size
    check_crop_size("global_size", kw["global_size"], p)
    if kw["num_local_crops"] < 0:
      raise UserError(f"config.task_kwargs.num_local_crops={kw['num_local_crops']} must be "
                      ">= 0 (paper: 10; 0 trains on the 2 global crops only).")
    if kw["num_local_crops"]:
      check_crop_size("local_size", kw["local_size"], p)
    check_scale("global_scale", kw["global_scale"])
    check_scale("local_scale", kw["local_scale"])
    for name in ("student_temp", "teacher_temp", "warmup_teacher_temp"):
      if not kw[name] > 0:
        raise UserError(f"config.task_kwargs.{name}={kw[name]} must be > 0 "
                        "(paper: student 0.1, teacher 0.04 -> 0.07).")
    for name in ("center_momentum", "momentum_teacher"):
      if not 0.0 <= kw[name] <= 1.0:
        raise UserError(f"config.task_kwargs.{name}={kw[name]} must be in [0, 1] "
                        "(paper: center 0.9, teacher 0.996).")
    self.total_steps = total_train_steps(config, info)
    self.warmup_temp_steps = int(round(kw["warmup_teacher_temp_frac"] * self.total_steps))
    blur = kw["blur"]
    common = dict(flip=bool(kw["flip"]), jitter_prob=float(kw["jitter_prob"]))
    g_scale, l_scale = tuple(kw["global_scale"]), tuple(kw["local_scale"])
    self.global_specs = [
        ViewSpec(kw["global_size"], g_scale, blur_prob=1.0 if blur else 0.0, **common),
        ViewSpec(kw["global_size"], g_scale, blur_prob=0.1 if blur else 0.0,
                 solarize_prob=float(kw["solarize"]), **common)]
    self.local_specs = [ViewSpec(kw["local_size"], l_scale, blur_prob=0.5 if blur else 0.0,
                                 **common)] * int(kw["num_local_crops"])

  def init_inputs(self):
    s = self.kw["global_size"]
    return jnp.zeros((1, s, s, 3), jnp.float32)

  def init_task_state(self, params):
    return {"teacher": params, "center": jnp.zeros((1, self.model.out_dim), jnp.float32)}

  def views(self, rng, images):
    """(global views [2B, G, G, 3], local views [N*B, L, L, 3] or None)."""
    inp = self.config.input
    g = make_views(jax.random.fold_in(rng, 0), images, self.global_specs, inp.mean, inp.std)
    loc = make_views(jax.random.fold_in(rng, 1), images, self.local_specs, inp.mean, inp.std)
    return jnp.concatenate(g), (jnp.concatenate(loc) if loc else None)

  def train_loss(self, params, model_state, batch, rng, *, consts=None, task_state=None,
                 step=None):
    del consts
    view_rng, drop_rng = jax.random.split(rng)
    images = batch["image"]
    b = images.shape[0]
    glob, loc = self.views(view_rng, images)
    s_glob, _, model_state = apply_model(self.model, params, model_state, glob, train=True,
                                         rng=drop_rng)
    student = list(jnp.split(s_glob.astype(jnp.float32), 2))
    if loc is not None:
      s_loc, _, model_state = apply_model(self.model, params, model_state, loc, train=True,
                                          rng=jax.random.fold_in(drop_rng, 1))
      student += list(jnp.split(s_loc.astype(jnp.float32), len(self.local_specs)))
    teacher_params = jax.lax.stop_gradient(task_state["teacher"])
    t_glob, _, _ = apply_model(self.model, teacher_params, model_state, glob, train=False)
    t_glob = jax.lax.stop_gradient(t_glob.astype(jnp.float32))
    kw = self.kw
    temp = teacher_temperature(step, self.warmup_temp_steps, kw["warmup_teacher_temp"],
                               kw["teacher_temp"])
    loss = dino_loss(student, list(jnp.split(t_glob, 2)), task_state["center"],
                     kw["student_temp"], temp)
    del b
    metrics = {"teacher_temp": temp,
               "momentum": cosine_momentum(step, self.total_steps, kw["momentum_teacher"])}
    return loss, (metrics, model_state, {"batch_center": jnp.mean(t_glob, axis=0, keepdims=True)})

  def update_task_state(self, task_state, params, task_out, step):
    m = cosine_momentum(step, self.total_steps, self.kw["momentum_teacher"])
    teacher = jax.tree.map(lambda t, p: m * t + (1.0 - m) * p, task_state["teacher"], params)
    c = self.kw["center_momentum"]
    center = c * task_state["center"] + (1.0 - c) * task_out["batch_center"]
    return {"teacher": teacher, "center": center}

  def eval_sums(self, params, model_state, batch):
    z, _, _ = apply_model(self.model, params, model_state, batch["image"], train=False)
    logp = jax.nn.log_softmax(z.astype(jnp.float32) / self.kw["student_temp"], axis=-1)
    entropy = -jnp.sum(jnp.exp(logp) * logp, axis=-1)
    valid = batch["mask"].astype(jnp.float32)
    return {"count": jnp.sum(valid), "entropy": jnp.sum(entropy * valid)}

  def eval_summary(self, sums):
    return {"entropy": sums["entropy"] / max(sums["count"], 1.0),
            "max_entropy": math.log(self.model.out_dim)}
