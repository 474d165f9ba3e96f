"""Tasks plug into the one trainer: each brings its loss, metrics and evaluation.

A task is a class built as `Task(config, dataset_info, model)` with:
  init_inputs() -> dict of dummy inputs used to initialise the model;
  train_loss(params, model_state, batch, rng) -> (loss, (metrics, new_model_state));
  eval_sums(params, model_state, batch) -> dict of per-batch sums (with 'count');
  eval_summary(sums) -> dict of final metrics (names without the 'eval/' prefix).
"""

from vitjax.errors import UserError
from vitjax.tasks.classification import ClassificationTask
from vitjax.tasks.detection import DetectionTask
from vitjax.tasks.mae import MaeTask
from vitjax.tasks.dino import DinoTask
from vitjax.tasks.moco import MocoV3Task
from vitjax.tasks.distillation import DistillationTask
from vitjax.tasks.multilabel import MultiLabelTask
from vitjax.tasks.segmentation import SegmentationTask
from vitjax.tasks.simmim import SimMimTask
from vitjax.tasks.token_labeling import TokenLabelingTask

TASKS = {"classification": ClassificationTask, "distillation": DistillationTask,
         "segmentation": SegmentationTask}
TASKS["token_labeling"] = TokenLabelingTask
TASKS["multilabel"] = MultiLabelTask
TASKS["mae"] = MaeTask
TASKS["detection"] = DetectionTask
TASKS["dino"] = DinoTask
TASKS["moco_v3"] = MocoV3Task
TASKS["simmim"] = SimMimTask

from vitjax.tasks.mask_classification import MaskClassificationTask  # noqa: E402

TASKS["mask_classification"] = MaskClassificationTask


def get_task(name: str):
  if name not in TASKS:
    raise UserError(f"Unknown task {name!r}; known tasks: {sorted(TASKS)}.")
  return TASKS[name]
