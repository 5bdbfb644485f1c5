"""The benchmark's option vocabulary, with no torch import, so ``cafusion bench --help`` is instant.

The parts' modules take their names from here; ``tests/test_bench.py`` checks that each part's
tables match (the networks, for one, are built in ``networks.py`` under these names).
"""

from __future__ import annotations

PARTS = ("block", "sweep", "padded", "autocast", "networks")
RANKS = {"1d": 1, "2d": 2, "3d": 3}
LAYOUTS = ("contiguous", "channels_last")
NETWORKS = ("cnn1d", "resnet18", "resnet1d", "fcn-5x361", "fcn-16x150", "resnet1d-20x427")
ATTENTIONS = ("none", "se", "eca", "cbam", "caft", "caft_sum")
DTYPES = ("fp32", "bf16", "fp16", "fp64")
REFERENCE_FILE = "reference_channel_attention_fusion_t.py"
