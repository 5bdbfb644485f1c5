"""A fresh virtual environment with only the core dependencies (pyproject's ``dependencies``): every
command either works or says in one line which extra to install.

pip installs a copy of this checkout (not editable) and resolves the core dependencies itself; torch
comes from ``CAFUSION_CORE_TORCH`` (a requirement or a local wheel; ``.ci/run`` points it at a CPU
wheel so CI need not unpack the CUDA build), default the same range as pyproject.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--widths", "4,8", "--epochs", "1", "--batch-size", "4", "--no-progress"]


def _venv(tmp: Path) -> Path:
    source = tmp / "src-copy"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".*", "build", "dist", "*.egg-info", "runs", "reports"))
    venv.EnvBuilder(with_pip=True).create(tmp / "venv")
    python = tmp / "venv" / "bin" / "python"
    torch = os.environ.get("CAFUSION_CORE_TORCH", "torch>=2.6,<3")
    cmd = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", torch, str(source)]
    subprocess.run(cmd, check=True, timeout=900, capture_output=True)
    return python


def _run(python: Path, *args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CAFUSION_DEBUG")}
    env["CAFUSION_NATIVE"] = "0"  # a machine with a compiler and ninja would compile here for 30-60 s
    cmd = [str(python), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def _one_line(result: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code and len(lines) == 1, result.stderr
    assert lines[0].startswith("cafusion: error:") and "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_core_only_install(tmp_path: Path) -> None:
    python = _venv(tmp_path)
    work = tmp_path / "work"
    work.mkdir()

    # only the core: the extras are really absent, and importing the package prints nothing
    extras = ("PIL", "tqdm", "sklearn", "matplotlib", "ninja")
    probe = f"import importlib.util as u; print([m for m in {extras!r} if u.find_spec(m)])"
    assert _run(python, "-c", probe, cwd=work).stdout.strip() == "[]"
    imported = _run(python, "-c", "import cafusion, numpy, safetensors", cwd=work)
    assert imported.returncode == 0 and imported.stderr == "", imported.stderr

    # train and inspect work
    rng = np.random.default_rng(0)
    y = np.arange(16) % 2
    np.savez(work / "d.npz", x=rng.standard_normal((16, 2, 12)).astype(np.float32) + y[:, None, None], y=y)
    trained = _run(python, "-m", "cafusion", "train", "--data", "d.npz", "--out", "run", *TINY, cwd=work)
    assert trained.returncode == 0, trained.stderr
    assert "done: 1 epochs" in trained.stdout
    assert trained.stderr == "", trained.stderr
    inspected = _run(python, "-m", "cafusion", "inspect", "run", cwd=work)
    assert inspected.returncode == 0 and "parameters:" in inspected.stdout, inspected.stderr

    # what needs an extra says which one, in one line, exit 1 (a failure while running, not a bad argument)
    for c in range(2):
        (work / "imgs" / f"c{c}").mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((4, 4), 100 * c, np.uint8)).save(work / "imgs" / f"c{c}" / f"{i}.png")
    images = _run(python, "-m", "cafusion", "train", "--data", "imgs", "--out", "run2", *TINY, cwd=work)
    _one_line(images, 1, "pip install 'cafusion[images]'")
    _one_line(_run(python, "-m", "cafusion", "demo", "--quick", cwd=work), 1, "pip install 'cafusion[demo]'")
    _one_line(_run(python, "-m", "cafusion", "inspect", "run", "--data", "digits", cwd=work), 1, "cafusion[demo]")
    assert sys.executable != str(python)  # the checks above ran in the fresh environment
