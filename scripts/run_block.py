"""The benchmarks of ``cafusion bench`` (block table, shape sweep, autocast, networks; see docs/performance.md).

Usage: ``python scripts/run_block.py [--quick] [--out DIR] [...]``; same flags as ``cafusion bench``.
"""

from __future__ import annotations

import sys

from cafusion.bench.main import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
