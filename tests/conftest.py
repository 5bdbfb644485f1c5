"""Shared fixtures: the reference module (the spec) and small helpers for parity checks."""

from __future__ import annotations

import os
from types import ModuleType

import pytest
import torch

from tests.reference import load_reference

_REFERENCE = load_reference()


@pytest.fixture(scope="session")
def reference() -> ModuleType:
    """The reference module from ../shared/seed.

    CI always has it (a copy of shared/ sits beside the clone), so there it is required: a missing
    reference fails instead of silently skipping the live parity tests. Elsewhere the golden
    fixtures carry the parity evidence and the live tests skip.
    """
    if _REFERENCE is None:
        if os.environ.get("CI"):
            pytest.fail("reference implementation not found in ../shared/seed (required in CI)")
        pytest.skip("reference implementation not found; golden fixtures still cover parity")
    return _REFERENCE


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
