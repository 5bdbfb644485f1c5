"""Locate and import the reference implementation (the specification), if it is present.

It lives outside the repository, in ../shared/seed beside the checkout (CI has a copy there too);
``CAFUSION_REFERENCE`` may point at the file instead. Parity tests that need it live alongside
golden fixtures generated from it, so the evidence stands even where it is absent.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

REPO_ROOT = Path(__file__).resolve().parents[1]
_CANDIDATES = [
    Path(os.environ["CAFUSION_REFERENCE"]) if os.environ.get("CAFUSION_REFERENCE") else None,
    REPO_ROOT.parent / "shared" / "seed" / "reference_channel_attention_fusion_t.py",
    REPO_ROOT / "shared" / "seed" / "reference_channel_attention_fusion_t.py",
]


def reference_path() -> Path | None:
    for path in _CANDIDATES:
        if path is not None and path.is_file():
            return path
    return None


def load_reference() -> ModuleType | None:
    path = reference_path()
    if path is None:
        return None
    spec = importlib.util.spec_from_file_location("cafusion_reference", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
