"""`python -m cacxr` is the same as the `cacxr` console script."""

import sys

from cacxr.cli import main

sys.exit(main())
