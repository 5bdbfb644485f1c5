"""``cafusion`` entry point: dispatches to sub-commands."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _demo(_: argparse.Namespace) -> int:
    import torch

    from cafusion import ChannelAttentionFusionT

    torch.manual_seed(0)
    block = ChannelAttentionFusionT(64, fusion="softmax", learnable_temperature=True, return_fusion_weights=True)
    x = torch.randn(4, 64, 14, 14)
    y, ca, fusion_w = block(x)
    print(block)
    print(f"x {tuple(x.shape)} -> y {tuple(y.shape)}, ca {tuple(ca.shape)}, T = {block.get_T().item():.4f}")
    for i, (wa, wm) in enumerate(fusion_w.tolist()):
        print(f"sample {i}: w_avg={wa:.3f} w_max={wm:.3f}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cafusion", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="build the block and print its outputs").set_defaults(func=_demo)
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
