"""Allow ``python -m cafusion``."""

import sys

from cafusion.cli.main import main

sys.exit(main())
