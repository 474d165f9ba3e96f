"""Knowledge distillation from a frozen teacher (a vitjax checkpoint).

`config.task = 'distillation'`, with `config.task_kwargs`:
  teacher: the teacher's vitjax workdir (or checkpoint dir); its model is
    rebuilt from the workdir's config.json, its weights (the EMA ones when the
    run kept them) are read once and passed to every step as an argument; its
    forward runs inside the same jitted step, without gradients.
  kind: 'hard' | 'soft' | 'none'.
    DeiT (Touvron et al. 2021, Sec. 5): with a distilled student (a
    distillation token and second head, out['logits_dist']) the class head
    learns the labels and the distillation head the teacher:
      hard: 1/2 CE(cls, y) + 1/2 CE(dist, argmax teacher)
      soft: (1 - alpha) CE(cls, y) + alpha tau^2 KL(softmax(t / tau) || softmax(dist / tau))
    Any other student (no distillation token): both terms on its one head,
    i.e. Hinton et al.'s KD with temperature. 'none' trains on the labels only
    (the baseline; the teacher is not needed).
  alpha (0.5), temperature (1.0 as in DeiT soft; 4.0 is common for KD),
  feature_weight (0): + weight * MSE(student out[feature_key], teacher
    out[feature_key]) (same feature width required), feature_key ('pre_logits').
"""


import jax
import jax.numpy as jnp
import ml_collections
import optax

from vitjax.errors import UserError
from vitjax.tasks.base import apply_model, register_task
from vitjax.tasks.classification import ClassificationTask, cross_entropy

_DEFAULTS = dict(teacher="", kind="hard", alpha=0.5, temperature=1.0, feature_weight=0.0,
                 feature_key="pre_logits")


@register_task("distillation")
class DistillationTask(ClassificationTask):
  """Classification with a frozen teacher's logits (and features) as extra targets."""

  mixes_batches = False  # the teacher's targets are for the unmixed images
  kwargs = _DEFAULTS

  def __init__(self, config, info, model):
    super().__init__(config, info, model)
    kw = self.kw
    if kw["kind"] not in ("hard", "soft", "none"):
      raise UserError(f"config.task_kwargs.kind={kw['kind']!r}: use 'hard', 'soft' or 'none'.")
    if not 0.0 <= kw["alpha"] <= 1.0 or kw["temperature"] <= 0:
      raise UserError(f"config.task_kwargs alpha={kw['alpha']} / temperature="
                      f"{kw['temperature']}: use 0 <= alpha <= 1 and temperature > 0.")
    self.teacher = None
    if kw["kind"] != "none" or kw["feature_weight"]:
      self._build_teacher(config, info)

  def _build_teacher(self, config, info):
    workdir = self.kw["teacher"]
    if not workdir:
      raise UserError("config.task_kwargs.teacher is empty: give the teacher's vitjax workdir "
                      "(e.g. a finished configs/resnet_digits.py run), or kind='none'.")
    from vitjax import runs  # pylint: disable=g-import-not-at-top
    what = "config.task_kwargs.teacher"
    tcfg = runs.read_config(workdir, what)
    self.teacher, _ = runs.build_model(tcfg, info.num_classes)
    self.teacher_image_size = int(tcfg.input.image_size)
    # Shapes first: a class-count mismatch is refused before anything is read or compiled.
    s = self.teacher_image_size
    shapes = jax.eval_shape(lambda: self.teacher.init(
        jax.random.PRNGKey(0), jnp.zeros((1, s, s, 3)), train=False))
    logits_shape = jax.eval_shape(
        lambda v: self.teacher.apply(v, jnp.zeros((1, s, s, 3)))[0], shapes)
    if logits_shape.shape[-1] != info.num_classes:
      raise UserError(
          f"The teacher in {workdir} predicts {logits_shape.shape[-1]} classes but the dataset "
          f"{config.dataset.name!r} has {info.num_classes}; distill from a teacher trained on "
          "the same classes.")
    self.teacher_vars, _ = runs.load_weights(workdir, what=what)  # EMA weights if kept
    self.teacher_name = tcfg.model_name

  def constants(self):
    """Passed to every train step as an argument (not baked into the program)."""
    return None if self.teacher is None else self.teacher_vars

  def _teacher_forward(self, teacher_vars, images):
    s = self.teacher_image_size
    if images.shape[1:3] != (s, s):
      images = jax.image.resize(images, (images.shape[0], s, s, images.shape[3]), "bilinear")
    logits, out = self.teacher.apply(teacher_vars, images, train=False)
    return jax.lax.stop_gradient(logits.astype(jnp.float32)), jax.lax.stop_gradient(out)

  def train_loss(self, params, model_state, batch, rng, *, consts=None, task_state=None,
                 step=None):
    del task_state, step
    logits, out, new_state = apply_model(self.model, params, model_state, batch["image"],
                                         train=True, rng=rng)
    kw, n = self.kw, self.num_classes
    cls_logits = out.get("logits_cls", logits)
    dist_logits = out.get("logits_dist", logits)
    label_loss = cross_entropy(cls_logits, batch["label"], n, self.config.label_smoothing)
    metrics = {"accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
               "label_loss": label_loss}
    if kw["kind"] == "none":
      loss = label_loss
      if "logits_dist" in out:  # the baseline trains both heads on the labels
        loss = 0.5 * label_loss + 0.5 * cross_entropy(dist_logits, batch["label"], n,
                                                      self.config.label_smoothing)
    else:
      t_logits, t_out = self._teacher_forward(consts, batch["image"])
      if kw["kind"] == "hard":
        distill = cross_entropy(dist_logits, jnp.argmax(t_logits, -1), n)
        loss = 0.5 * label_loss + 0.5 * distill
      else:
        tau = kw["temperature"]
        distill = tau ** 2 * jnp.mean(optax.kl_divergence(
            jax.nn.log_softmax(dist_logits.astype(jnp.float32) / tau),
            jax.nn.softmax(t_logits / tau)))
        loss = (1.0 - kw["alpha"]) * label_loss + kw["alpha"] * distill
      metrics["distill_loss"] = distill
      metrics["teacher_agreement"] = jnp.mean(
          jnp.argmax(dist_logits, -1) == jnp.argmax(t_logits, -1))
    if kw["feature_weight"]:
      key = kw["feature_key"]
      if consts is None:
        t_out = self._teacher_forward(self.teacher_vars, batch["image"])[1]
      fs, ft = out[key].astype(jnp.float32), t_out[key].astype(jnp.float32)
      feat = jnp.mean(jnp.square(fs - ft))
      loss = loss + kw["feature_weight"] * feat
      metrics["feature_loss"] = feat
    return loss, (metrics, new_state, None)

  def check_params(self, params_shapes):
    """Refuses a feature loss between features of different widths (before compile)."""
    if not self.kw["feature_weight"] or self.teacher is None:
      return
    key, s = self.kw["feature_key"], self.config.input.image_size
    st = jax.eval_shape(lambda p: self.model.apply({"params": p}, jnp.zeros((1, s, s, 3)))[1],
                        params_shapes)
    tt = jax.eval_shape(lambda v: self.teacher.apply(
        v, jnp.zeros((1, self.teacher_image_size,) * 2 + (3,)))[1], self.teacher_vars)
    if key not in st or key not in tt or st[key].shape[1:] != tt[key].shape[1:]:
      raise UserError(
          f"config.task_kwargs.feature_key={key!r}: student feature "
          f"{getattr(st.get(key), 'shape', None)} vs teacher {getattr(tt.get(key), 'shape', None)};"
          " the feature MSE needs the same shape (pick another key or feature_weight=0).")


def distillation_kwargs(**overrides) -> ml_collections.ConfigDict:
  """config.task_kwargs for 'distillation', with the defaults filled in."""
  return ml_collections.ConfigDict(dict(_DEFAULTS, **overrides))
