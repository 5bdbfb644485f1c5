"""Training on a user's own data: loading, models, checkpoints, torchrun DDP and the loop.

The command-line entry is ``cafusion train`` (``cafusion.cli.train``); :func:`train` is the same
thing from Python.
"""

from cafusion.training.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from cafusion.training.config import TrainConfig
from cafusion.training.data import load_dataset, split_dataset
from cafusion.training.dataset import DataError, Dataset
from cafusion.training.models import ModelError, ModelSpec, build_model
from cafusion.training.trainer import TrainInterrupted, TrainResult, train

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "DataError",
    "Dataset",
    "ModelError",
    "ModelSpec",
    "TrainConfig",
    "TrainInterrupted",
    "TrainResult",
    "build_model",
    "load_checkpoint",
    "load_dataset",
    "save_checkpoint",
    "split_dataset",
    "train",
]
