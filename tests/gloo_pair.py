"""Two gloo processes on this machine for the tests that need a real process group."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch.multiprocessing as mp


def spawn_pair(worker: Callable[..., None], tmp_path: Path, *args: Any) -> None:
    """``worker(rank, store, *args)`` on ranks 0 and 1, ``store`` a fresh file for init_process_group.

    Retried once, with a new store, when gloo's connection set-up between the two ranks fails
    ("connectFullMesh ... Connection closed by peer"): seen once in four loaded make-test runs on a
    2-core machine, at init_process_group, before the worker ran any code under test.
    """
    for attempt in range(2):
        store = str(tmp_path / f"store-{attempt}")
        try:
            mp.spawn(worker, args=(store, *args), nprocs=2, join=True)
            return
        except mp.ProcessRaisedException as exc:
            if attempt or "connectFullMesh" not in str(exc):
                raise
