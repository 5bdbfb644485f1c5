"""Training on a user's own data: loading, models, checkpoints, torchrun DDP and the loop.

The command-line entry is ``cafusion train`` (``cafusion.cli.train``); :func:`train` is the same
thing from Python. The names load on first use, so importing a light submodule (``training.demo``'s
variant table, for ``cafusion demo --help``) does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cafusion import _lazy

_LAZY = {
    "Checkpoint": "run_checkpoint",
    "CheckpointError": "run_checkpoint",
    "load_checkpoint": "run_checkpoint",
    "save_checkpoint": "run_checkpoint",
    "TrainConfig": "config",
    "load_dataset": "data",
    "split_dataset": "data",
    "DataError": "dataset",
    "Dataset": "dataset",
    "ModelError": "model_factory",
    "ModelSpec": "model_factory",
    "build_model": "model_factory",
    "TrainInterrupted": "trainer",
    "TrainResult": "trainer",
    "train": "trainer",
}

__all__ = sorted(_LAZY)

if TYPE_CHECKING:
    from cafusion.training.config import TrainConfig as TrainConfig
    from cafusion.training.data import load_dataset as load_dataset
    from cafusion.training.data import split_dataset as split_dataset
    from cafusion.training.dataset import DataError as DataError
    from cafusion.training.dataset import Dataset as Dataset
    from cafusion.training.model_factory import ModelError as ModelError
    from cafusion.training.model_factory import ModelSpec as ModelSpec
    from cafusion.training.model_factory import build_model as build_model
    from cafusion.training.run_checkpoint import Checkpoint as Checkpoint
    from cafusion.training.run_checkpoint import CheckpointError as CheckpointError
    from cafusion.training.run_checkpoint import load_checkpoint as load_checkpoint
    from cafusion.training.run_checkpoint import save_checkpoint as save_checkpoint
    from cafusion.training.trainer import TrainInterrupted as TrainInterrupted
    from cafusion.training.trainer import TrainResult as TrainResult
    from cafusion.training.trainer import train as train

__getattr__, __dir__ = _lazy.attach(__name__, {k: f"cafusion.training.{v}" for k, v in _LAZY.items()})
