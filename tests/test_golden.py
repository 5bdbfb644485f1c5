"""Parity evidence that stands without ../shared: replay outputs the reference produced once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from cafusion import ChannelAttentionFusionT
from tests.parity import TOLERANCES, assert_same, config_id, run

CASES: list[dict[str, Any]] = torch.load(Path(__file__).parent / "fixtures" / "golden.pt", weights_only=True)


def test_golden_covers_every_configuration() -> None:
    seen = {config_id({k: c["config"][k] for k in list(c["config"])[:6]}) for c in CASES}
    assert len(CASES) == 64 and len(seen) == 64


@pytest.mark.parametrize("case", CASES, ids=lambda c: config_id(c["config"]))
def test_matches_reference_golden(case: dict[str, Any]) -> None:
    x = case["x"]
    block = ChannelAttentionFusionT(x.shape[1], **case["config"]).to(x.dtype)
    block.load_state_dict(case["state_dict"], strict=True)
    assert_same(run(block, x), case["expected"], *TOLERANCES[x.dtype])
