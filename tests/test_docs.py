"""The docs describe the tree as it is: every repository path that README.md, docs/*.md or a source
comment names exists, and every Python example in README.md and docs/*.md runs as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SOURCES = sorted(p for ext in ("py", "h", "cpp") for p in (ROOT / "src").rglob(f"*.{ext}"))
# A path is ours when its first part is a folder of the repository or of the package (README and the
# sources name package modules as cafusion/x.py, or kernels/x.py from inside the package).
PACKAGE = ROOT / "src" / "cafusion"
OURS = {p.name for p in (*ROOT.iterdir(), *PACKAGE.iterdir()) if p.is_dir() and not p.name.startswith(".")}
OURS |= {"cafusion", ".ci"}
PATH = re.compile(r"(?<![\w./-])((?:[\w.-]+/)+[\w.-]+\.(?:py|md|h|cpp|toml|txt|csv|json|png|yml|yaml))\b")
# files a run writes (not in the tree): run folders, benchmark output
WRITTEN = ("bench-results/", "runs/", "reports/", "OUT/", "diagnostics/epoch-", "diagnostics/latest")


def _named_paths(text: str) -> set[str]:
    found = set()
    for path in PATH.findall(text):
        first = path.split("/")[0]
        if first in OURS and not path.startswith(WRITTEN):
            found.add(path)
    return found


def _exists(path: str) -> bool:
    bases = (ROOT, ROOT / "src", PACKAGE, PACKAGE / "kernels", PACKAGE / "kernels" / "backends")
    return any((base / path).exists() for base in bases)


@pytest.mark.parametrize("doc", [*DOCS, *SOURCES], ids=lambda p: str(p.relative_to(ROOT)))
def test_named_paths_exist(doc: Path) -> None:
    missing = sorted(p for p in _named_paths(doc.read_text()) if not _exists(p))
    assert not missing, f"{doc.relative_to(ROOT)} names paths that do not exist: {missing}"


def test_the_path_check_can_fail() -> None:
    assert _named_paths("see `src/cafusion/nothing_here.py` and cafusion/dispatch.py") == {
        "src/cafusion/nothing_here.py",
        "cafusion/dispatch.py",
    }
    assert not _exists("src/cafusion/nothing_here.py") and _exists("cafusion/dispatch.py")


EXAMPLES = {doc: re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.S) for doc in DOCS}


def test_readme_has_examples() -> None:
    assert len(EXAMPLES[ROOT / "README.md"]) >= 2


@pytest.mark.parametrize("doc", [d for d, blocks in EXAMPLES.items() if blocks], ids=lambda p: p.name)
def test_examples_run(doc: Path, tmp_path: Path) -> None:
    """A page's examples run in order in one fresh interpreter (a later block may use an earlier one's
    names, as a reader does), in an empty folder, so that nothing they register or write leaks out."""
    script = "\n".join(
        f"exec(compile({block!r}, {f'{doc.name}[python block {i}]'!r}, 'exec'), ns)"
        for i, block in enumerate(EXAMPLES[doc])
    )
    code = f"ns = {{}}\n{script}\nprint('examples ran')"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env, check=False
    )
    assert proc.returncode == 0 and "examples ran" in proc.stdout, proc.stderr[-3000:]
