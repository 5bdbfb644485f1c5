"""Importing cafusion, and using its core, pulls in none of the optional integrations' packages."""

from __future__ import annotations

import subprocess
import sys

OPTIONAL = ("lightning", "pytorch_lightning", "aeon", "sklearn", "torchao", "onnxruntime", "submitit", "triton")

CODE = f"""
import sys, torch
import cafusion
from cafusion import ChannelAttentionFusionT, FusionMonitor
import cafusion.integrations, cafusion.integrations.aeon, cafusion.integrations.quantize
block = ChannelAttentionFusionT(8)
with FusionMonitor(block):
    block(torch.randn(2, 8, 5))
loaded = sorted({{m.split('.')[0] for m in sys.modules}} & set({OPTIONAL!r}))
print(loaded)
"""


def test_the_core_and_the_integration_modules_import_no_optional_package() -> None:
    """The aeon and int8 modules import their libraries on first use, so a core install can import them."""
    result = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
