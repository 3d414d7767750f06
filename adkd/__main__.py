"""``python -m adkd``: the ``adkd`` command."""

import sys

from adkd.cli import main

sys.exit(main())
