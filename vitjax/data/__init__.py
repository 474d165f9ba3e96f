"""Input pipeline: digits (embedded), ImageFolder and TFDS sources via tf.data.

See `vitjax.data.input_pipeline` for the determinism / resume / multi-process
contract.
"""

from vitjax.data.input_pipeline import DatasetInfo
from vitjax.data.input_pipeline import eval_iterator
from vitjax.data.input_pipeline import get_dataset_info
from vitjax.data.input_pipeline import steps_per_epoch
from vitjax.data.input_pipeline import train_iterator

__all__ = [
    'DatasetInfo',
    'eval_iterator',
    'get_dataset_info',
    'steps_per_epoch',
    'train_iterator',
]
