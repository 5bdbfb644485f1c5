"""``python -m cafusion.bench [...]``: the same as ``cafusion bench [...]``."""

from cafusion.bench.main import main

raise SystemExit(main())
