"""Input pipelines: digits (embedded), ImageFolder and TFDS sources via tf.data.

How data plugs in (the contract, in full: `vitjax.data.source`): a *source*
says which examples come in which order (`ArraySource` for in-memory or
file-path arrays, `TfdsSource` for a prepared TFDS set), a pipeline's
per-example function says what one example becomes, and the shared
`train_batches` / `eval_batches` turn the two into batches that are a pure
function of (seed, step), resumable at any step and sharded by process
(process i of P yields rows [i*L, (i+1)*L) of every global batch).

Pipelines built on it: `input_pipeline` (classification; re-exported here),
`dense` (segmentation), `detection` (boxes).
"""

from vitjax.data.input_pipeline import eval_iterator
from vitjax.data.input_pipeline import get_dataset_info
from vitjax.data.input_pipeline import steps_per_epoch
from vitjax.data.input_pipeline import train_iterator
from vitjax.data.source import ArraySource
from vitjax.data.source import DatasetInfo
from vitjax.data.source import Source
from vitjax.data.source import TfdsSource
from vitjax.data.source import eval_batches
from vitjax.data.source import train_batches

__all__ = [
    'ArraySource',
    'DatasetInfo',
    'Source',
    'TfdsSource',
    'eval_batches',
    'eval_iterator',
    'get_dataset_info',
    'steps_per_epoch',
    'train_batches',
    'train_iterator',
]
