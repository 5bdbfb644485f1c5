"""Soak test for multi-process training: N consecutive two-process ``torchrun`` trainings on the CPU.

A run fails when torchrun exits non-zero, or when any process prints a traceback or C++'s
"terminate called ..." (a worker aborting at exit can leave torchrun's status at 0 for the other
rank's sake, so the output is checked too). Prints one line per run and the failure count; exits 1
if any run failed. Not part of CI (it takes minutes): ``make soak``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BAD_OUTPUT = ("Traceback", "terminate called", "core dumped", "ChildFailedError")


def write_data(path: Path) -> Path:
    rng = np.random.default_rng(0)
    y = np.arange(48) % 3
    x = rng.standard_normal((48, 2, 6, 6)).astype(np.float32) + y[:, None, None, None]
    np.savez(path, x=x, y=y)
    return path


def one_run(data: Path, out: Path, norm: str, epochs: int) -> tuple[bool, str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "cafusion"]
    cmd += ["train", "--data", str(data), "--out", str(out), "--epochs", str(epochs), "--batch-size", "8"]
    cmd += ["--widths", "4,8", "--norm", norm, "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    text = result.stdout + result.stderr
    bad = [marker for marker in BAD_OUTPUT if marker in text]
    ok = result.returncode == 0 and not bad
    return ok, f"exit {result.returncode}" + (f", output has {bad}" if bad else "") + (
        "" if ok else "\n" + text[-3000:]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="number of consecutive runs (default: 30)")
    parser.add_argument("--norm", default="batch", choices=("batch", "group", "none"), help="default: batch")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per run (default: 2)")
    args = parser.parse_args()
    failures = 0
    with tempfile.TemporaryDirectory(prefix="cafusion-soak-") as tmp:
        data = write_data(Path(tmp) / "d.npz")
        for i in range(args.runs):
            started = time.perf_counter()
            ok, detail = one_run(data, Path(tmp) / f"run-{i}", args.norm, args.epochs)
            failures += not ok
            status = "ok" if ok else "FAILED"
            print(f"run {i + 1}/{args.runs}: {status} ({time.perf_counter() - started:.1f} s, {detail})", flush=True)
    print(f"failures: {failures}/{args.runs} (two-process torchrun, --norm {args.norm}, {args.epochs} epochs)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
