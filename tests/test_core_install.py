"""A fresh virtual environment with only the core dependencies (pyproject's ``dependencies``): every
command either works or says in one line which extra to install.

pip installs a copy of this checkout (not editable) and resolves the core dependencies itself. torch is
the one exception: the fresh environment sees this environment's torch (and only what torch itself
requires) through a ``.pth`` file of links, so the test downloads no second torch (several GB with the
CUDA wheels) while numpy and safetensors still have to come from pyproject's requirements.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
from packaging.requirements import Requirement
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--widths", "4,8", "--epochs", "1", "--batch-size", "4", "--no-progress"]


def _torch_closure() -> set[str]:
    """torch and what it requires, recursively (markers evaluated here), as distribution names."""
    seen: set[str] = set()
    todo = ["torch"]
    while todo:
        name = todo.pop()
        key = name.lower().replace("_", "-")
        if key in seen:
            continue
        seen.add(key)
        for line in importlib.metadata.distribution(name).requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def _link_torch(target: Path) -> None:
    """Links to the top-level files and folders of torch's distributions (metadata included) in ``target``."""
    target.mkdir()
    for name in _torch_closure():
        dist = importlib.metadata.distribution(name)
        for top in {Path(f).parts[0] for f in dist.files or []}:
            source = Path(str(dist.locate_file(top)))
            if top.endswith(".pth") or top == ".." or not source.exists() or (target / top).exists():
                continue
            (target / top).symlink_to(source)


def _venv(tmp: Path) -> Path:
    source = tmp / "src-copy"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".*", "build", "dist", "*.egg-info", "runs", "reports"))
    venv.EnvBuilder(with_pip=True).create(tmp / "venv")
    python = tmp / "venv" / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    _link_torch(tmp / "torch-only")
    (Path(site) / "torch-only.pth").write_text(str(tmp / "torch-only") + "\n")
    cmd = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(source)]
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
    # numpy and safetensors were installed by pip from pyproject's dependencies (not linked); torch is linked
    where = "import numpy, safetensors, torch; print(numpy.__file__, safetensors.__file__, torch.__file__)"
    numpy_file, safetensors_file, torch_file = _run(python, "-c", where, cwd=work).stdout.split()
    assert str(tmp_path / "venv") in numpy_file and str(tmp_path / "venv") in safetensors_file
    assert "torch-only" in torch_file
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
